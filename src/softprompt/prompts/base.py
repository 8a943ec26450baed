"""The prompt family's interface: what every kind of prompt (hard, soft, deep, task, mixture) gives the
engine, the optimizers and the prompt files.

A prompt owns a table of ``length`` vectors for its *prompt positions*. The engine asks it for
``vectors()`` (what enters the LM at layer 0 there, or None to embed the prompt's own words) and
``deltas()`` (per-layer additive perturbations of those positions, ``(L+1, length, d)``, or None).
Optimizers train ``trainable_parameters()``. A prompt file stores ``tensors()`` with ``metadata()``
(see ``prompts.files``); each kind rebuilds itself from them in ``from_file``.

``TemplatePrompt`` is the base of the prompts over a LAMA template ("[X] was born in [Y] ."): hard, soft
and deep, and the components of a mixture.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write
from softprompt.models import LanguageModel
from softprompt.templates import TemplateEncoder

FORMAT = "softprompt.prompt/2"
# kind name -> class; every subclass that names a ``kind`` registers itself here.
PROMPT_KINDS: dict[str, type[Prompt]] = {}


class Prompt(nn.Module):
    """Base class of every kind of prompt."""

    kind: ClassVar[str]

    def __init__(self, lm: LanguageModel) -> None:
        super().__init__()
        self.lm = lm
        self.model_name = lm.name
        self.hidden_size = lm.hidden_size
        self.num_layers = lm.num_layers

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            PROMPT_KINDS[cls.kind] = cls

    @property
    def length(self) -> int:
        raise NotImplementedError

    def vectors(self) -> torch.Tensor | None:
        return None

    def deltas(self) -> torch.Tensor | None:
        return None

    def input_vectors(self) -> torch.Tensor:
        """The vectors that enter the LM at the prompt positions, ``(length, d)``: ``vectors()``, or the
        embeddings of the prompt's own words when it has none (so that prompts can share one table)."""
        vectors = self.vectors()
        if vectors is not None:
            return vectors
        return self.lm.embed(torch.tensor(self.word_ids(), dtype=torch.long, device=self.lm.device)).detach().float()

    def word_ids(self) -> Sequence[int]:
        raise SoftpromptError(f"a {self.kind} prompt has no words of its own")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def metadata(self) -> dict[str, Any]:
        """What a prompt file needs besides the tensors; subclasses add their own fields."""
        return {"format": FORMAT, "kind": self.kind, "model": self.model_name, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to rebuild the prompt, besides the metadata."""
        return {name: t.detach().contiguous() for name, t in self.state_dict().items()}

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a prompt file (safetensors, with the metadata as JSON under the header key "softprompt")."""
        meta = {**self.metadata(), **(extra or {})}
        tensors = self.tensors() or {"empty": torch.zeros(0)}  # safetensors cannot write a file without tensors
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"softprompt": json.dumps(meta)}))

    @classmethod
    def from_file(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], lm: LanguageModel,
                  path: Path) -> Prompt:
        """Rebuild a saved prompt for ``lm`` (its shape has been checked against the file)."""
        raise NotImplementedError


def stack_prompts(prompts: Sequence[Prompt]) -> tuple[torch.Tensor | None, torch.Tensor | None, list[int]]:
    """One vector table for several prompts (one engine call can then score rows under any of them), one
    delta table if any prompt is deep, and the row where each prompt's vectors start."""
    offsets = [sum(p.length for p in prompts[:i]) for i in range(len(prompts))]
    return stack_vectors(prompts), stack_deltas(prompts), offsets


def stack_vectors(prompts: Sequence[Prompt]) -> torch.Tensor | None:
    """The prompts' input vectors in one table, ``(Σ lengths, d)``; None when no prompt has a position."""
    present = [p.input_vectors() for p in prompts if p.length]
    return torch.cat(present) if present else None


def stack_deltas(prompts: Sequence[Prompt]) -> torch.Tensor | None:
    """The prompts' deltas in one table, ``(L+1, Σ lengths, d)``, zeros for prompts that are not deep;
    None when none is deep."""
    present = [(p, p.deltas()) for p in prompts if p.length]
    deep = next((d for _, d in present if d is not None), None)
    if deep is None:
        return None
    return torch.cat([d if d is not None else deep.new_zeros(deep.shape[0], p.length, deep.shape[2])
                      for p, d in present], dim=1)


def token_fields(lm: LanguageModel, ids: Sequence[int]) -> dict[str, Any]:
    """A searched hard prompt's fields in its file: the token ids, and their tokens and text for people (the
    tokens also let a load check that the ids mean the same for the loading model)."""
    return {"token_ids": list(ids), "tokens": lm.tokenizer.convert_ids_to_tokens(list(ids)),
            "text": lm.tokenizer.decode(list(ids))}


def searched_tokens(meta: dict[str, Any], lm: LanguageModel, path: Path) -> list[int] | None:
    """The token ids of a searched hard prompt's file (None if it has none), refused where the loading
    model's tokenizer gives them other tokens: ids mean nothing without their vocabulary."""
    ids, tokens = meta.get("token_ids"), meta.get("tokens")
    if ids is None:
        return None
    if not (isinstance(ids, list) and all(isinstance(i, int) and 0 <= i < lm.vocab_size for i in ids)
            and isinstance(tokens, list) and len(tokens) == len(ids)):
        raise SoftpromptError(f"{path}: its 'token_ids' must be token ids of model '{lm.name}' (0 to "
                              f"{lm.vocab_size - 1}) with one entry of 'tokens' each; the file is damaged or was "
                              "edited; search the prompt again")
    if lm.tokenizer.convert_ids_to_tokens(ids) != tokens:
        raise SoftpromptError(f"{path}: its token ids are {tokens[:5]}... for model '{meta['model']}' but other tokens "
                              f"for '{lm.name}'; use --model {meta['model']}")
    return ids


class TemplatePrompt(Prompt):
    """A prompt over a LAMA template: one vector per template token (the subject and answer stay words)."""

    def __init__(self, encoder: TemplateEncoder, init: str) -> None:
        super().__init__(encoder.lm)
        self.encoder = encoder
        self.init = init

    @property
    def length(self) -> int:
        return len(self.encoder.prompt_ids)

    @property
    def template(self) -> str:
        return self.encoder.template.text

    def word_ids(self) -> Sequence[int]:
        return self.encoder.prompt_ids

    def metadata(self) -> dict[str, Any]:
        return super().metadata() | {"template": self.template, "init": self.init,
                                     "prompt_token_ids": list(self.encoder.prompt_ids)}

    @classmethod
    def from_file(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], lm: LanguageModel,
                  path: Path) -> TemplatePrompt:
        encoder = TemplateEncoder(meta["template"], lm)
        cls.check_tokens(encoder, meta, lm, path)
        prompt = cls.from_encoder(encoder, meta["init"])
        prompt.load_state_dict(tensors)
        return prompt

    @classmethod
    def check_tokens(cls, encoder: TemplateEncoder, meta: dict[str, Any], lm: LanguageModel, path: Path) -> None:
        """A saved prompt fits ``lm`` only if its template has as many prompt tokens for it."""
        saved = meta["prompt_token_ids"]
        if len(encoder.prompt_ids) != len(saved):
            raise SoftpromptError(
                f"{path}: its template has {len(saved)} prompt tokens for model '{meta['model']}' but "
                f"{len(encoder.prompt_ids)} for '{lm.name}'; use --model {meta['model']}"
            )

    @classmethod
    def from_encoder(cls, encoder: TemplateEncoder, init: str = "template", seed: int = 0) -> TemplatePrompt:
        """A new prompt of this kind over ``encoder``'s template."""
        return cls(encoder, init=init, seed=seed)

