"""The prompt interface shared by hard, soft and deep prompts, and the prompt file format.

A prompt owns ``n`` vectors for the template's own tokens (its *prompt positions*). The engine asks it
for ``vectors()`` (what enters the LM at layer 0, or None to embed the template's words) and
``deltas()`` (per-layer additive perturbations at the prompt positions, or None).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write
from softprompt.models import LanguageModel
from softprompt.templates import TemplateEncoder

if TYPE_CHECKING:
    from softprompt.prompts.mixture import MixturePrompt

FORMAT = "softprompt.prompt/1"
PROMPT_TYPES: dict[str, type[Prompt]] = {}


class Prompt(nn.Module):
    """Base class; subclasses register themselves under their ``mode`` name."""

    mode: ClassVar[str]

    def __init__(self, encoder: TemplateEncoder, init: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.init = init
        self.model_name = encoder.lm.name
        self.hidden_size = encoder.lm.hidden_size
        self.num_layers = encoder.lm.num_layers

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        PROMPT_TYPES[cls.mode] = cls

    @property
    def length(self) -> int:
        return len(self.encoder.prompt_ids)

    @property
    def template(self) -> str:
        return self.encoder.template.text

    def vectors(self) -> torch.Tensor | None:
        return None

    def deltas(self) -> torch.Tensor | None:
        return None

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "mode": self.mode,
            "model": self.model_name,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "template": self.template,
            "init": self.init,
            "prompt_token_ids": list(self.encoder.prompt_ids),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to rebuild the prompt, besides the metadata."""
        return {name: t.detach().contiguous() for name, t in self.state_dict().items()}

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        meta = {**self.metadata(), **(extra or {})}
        tensors = self.tensors() or {"empty": torch.zeros(0)}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"softprompt": json.dumps(meta)}))


def read_prompt_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path)
    if path.is_dir():
        path = path / "prompt.safetensors"
    if not path.is_file():
        raise SoftpromptError(f"prompt file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k != "empty"}  # noqa: SIM118
        meta = json.loads(header["softprompt"])
    except (KeyError, json.JSONDecodeError, OSError, Exception) as err:
        raise SoftpromptError(
            f"{path} is not a softprompt prompt file (safetensors with 'softprompt' JSON metadata): {err}"
        ) from err
    if meta.get("format") != FORMAT:
        raise SoftpromptError(f"{path}: unsupported prompt format {meta.get('format')!r}; expected {FORMAT}")
    return meta, tensors


def load_prompt(path: str | Path, lm: LanguageModel) -> Prompt | MixturePrompt:
    """Load a saved prompt for ``lm``, refusing one trained for a model of another shape."""
    meta, tensors = read_prompt_file(path)
    if meta["hidden_size"] != lm.hidden_size:
        raise SoftpromptError(
            f"{path} holds a prompt trained for model '{meta['model']}' (hidden size {meta['hidden_size']}), "
            f"but the loaded model '{lm.name}' has hidden size {lm.hidden_size}; "
            f"load it with --model {meta['model']} or train a new prompt for this model"
        )
    deep = meta["mode"] == "deep" or meta.get("component_mode") == "deep" or meta.get("kind") == "deep"
    if deep and meta["num_layers"] != lm.num_layers:
        raise SoftpromptError(
            f"{path} holds a deep prompt for {meta['num_layers']} layers, but model '{lm.name}' has "
            f"{lm.num_layers}; load it with --model {meta['model']}"
        )
    if meta["mode"] == "mixture":
        from softprompt.prompts.mixture import MixturePrompt  # the mixture module builds on this one

        return MixturePrompt.from_saved(meta, tensors, lm, path)
    if meta["mode"] == "task":
        from softprompt.prompts.task import TaskPrompt

        return TaskPrompt.from_saved(meta, tensors, lm)
    if meta["mode"] not in PROMPT_TYPES:
        raise SoftpromptError(f"{path}: unknown prompt mode {meta['mode']!r}; known: {', '.join(PROMPT_TYPES)}")
    encoder = TemplateEncoder(meta["template"], lm)
    if list(encoder.prompt_ids) != meta["prompt_token_ids"] and meta["mode"] == "hard":
        raise SoftpromptError(f"{path}: the template tokenises differently for model '{lm.name}'")
    if len(encoder.prompt_ids) != len(meta["prompt_token_ids"]):
        raise SoftpromptError(
            f"{path}: its template has {len(meta['prompt_token_ids'])} prompt tokens for model "
            f"'{meta['model']}' but {len(encoder.prompt_ids)} for '{lm.name}'; use --model {meta['model']}"
        )
    prompt = PROMPT_TYPES[meta["mode"]](encoder, init=meta["init"])
    prompt.load_state_dict(tensors)
    return prompt
