"""Task prompts for classification and multiple choice: trainable vectors laid out around a task's input.

A *layout* is a short pattern over the rendered task input: ``[P*20]{input}`` is prefix prompt tuning
(Lester et al.), ``[P*20]{description}\\nOptions: {options}\\n{input}`` is ZeroPrompt's hybrid prompt
(soft prompt, task description, verbalizer candidates, input), ``{input}`` with ``[P]`` markers inside
the task's own template places soft tokens within it (P-tuning style), and ``{input}`` alone is the
manual (hard) prompt. Each ``[P]`` is one vector; ``[P*N]`` is N of them. Vectors are numbered in
reading order, layout first, then the template.

What training tunes (``tuning``): nothing (``hard``: a layout without [P] markers, the manual or hybrid-hard
prompt), the vectors (``soft``), or, with the vectors fixed, an additive perturbation of the prompt
positions at every layer including the input (``deep``, as the deep prompts of P-tuning v2 / Qin & Eisner
§3.2, here as hidden-state perturbations rather than per-layer key/value prefixes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts.base import Prompt, searched_tokens, token_fields
from softprompt.prompts.soft import embedding_gaussian

LAYOUTS = {
    "manual": "{input}",
    "prefix": "[P*{n}]{input}",
    "hybrid": "[P*{n}]{description}\nOptions: {options}\n{input}",
    "hybrid-hard": "{description}\nOptions: {options}\n{input}",
    "template": "{input}",
}
INITS = ("text", "vocab", "random")
TUNINGS = ("hard", "soft", "deep")
MARKER = re.compile(r"\[P(?:\*(\d+))?\]")
FIELDS = re.compile(r"\{(\w+)\}")
# Lester et al. sample initial vectors from the 5,000 most common tokens; BPE ids roughly follow
# frequency (merge order), so the first 5,000 ids after the special tokens stand in for that list.
VOCAB_INIT_SIZE = 5000


def expand_layout(layout: str, length: int) -> str:
    """A layout name or pattern as a pattern with explicit counts."""
    pattern = LAYOUTS.get(layout, layout).replace("{n}", str(length))
    unknown = set(FIELDS.findall(pattern)) - {"input", "description", "options"}
    if "{input}" not in pattern or unknown:
        raise SoftpromptError(
            f"layout {layout!r} must contain {{input}} and may use {{description}}, {{options}} and [P]/[P*N] "
            f"markers (unknown: {', '.join(sorted(unknown)) or 'none'}); or name one of: {', '.join(LAYOUTS)}"
        )
    return pattern


def count_markers(text: str) -> int:
    return sum(int(n or 1) for n in MARKER.findall(text))


def split_markers(text: str) -> list[str | int]:
    """Text pieces and soft-vector counts in order: ``"a [P*2] b"`` -> ``["a ", 2, " b"]``."""
    pieces: list[str | int] = []
    last = 0
    for m in MARKER.finditer(text):
        if m.start() > last:
            pieces.append(text[last : m.start()])
        pieces.append(int(m.group(1) or 1))
        last = m.end()
    if last < len(text):
        pieces.append(text[last:])
    return pieces


class TaskPrompt(Prompt):
    kind = "task"

    def __init__(
        self,
        lm: LanguageModel,
        layout: str,
        length: int,
        template_markers: int = 0,
        tuning: str = "soft",
        init: str = "text",
        init_text: str = "",
        seed: int = 0,
        task: str = "",
        token_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__(lm)
        if tuning not in TUNINGS:
            raise SoftpromptError(f"unknown task prompt tuning {tuning!r}; choose one of: {', '.join(TUNINGS)}")
        if init not in INITS:
            raise SoftpromptError(f"unknown prompt init {init!r}; choose one of: {', '.join(INITS)}")
        self.layout = expand_layout(layout, length)
        self.tuning, self.init, self.init_text, self.seed, self.task = tuning, init, init_text, seed, task
        self.template_markers = template_markers
        n = count_markers(self.layout) + template_markers
        self.token_ids = tuple(token_ids) if token_ids is not None else None
        if tuning == "hard" and n and self.token_ids is None:
            raise SoftpromptError(f"a hard prompt has no vectors, but layout {self.layout!r} and the task template "
                                  f"have {n} [P] markers; use a soft or deep prompt, or search token ids for them")
        if self.token_ids is not None:
            if tuning != "hard" or len(self.token_ids) != n:
                raise SoftpromptError(f"searched token ids make a hard prompt with one id per [P] marker ({n}), got "
                                      f"{len(self.token_ids)} ids for a {tuning} prompt")
            base = lm.embed(torch.tensor(self.token_ids, dtype=torch.long, device=lm.device)).detach().float()
        else:
            base = initial_task_vectors(lm, n, init, init_text, seed)
        if tuning == "soft":
            self.weight = nn.Parameter(base)
        else:
            self.register_buffer("weight", base)
        if tuning == "deep":
            self.delta = nn.Parameter(torch.zeros(self.num_layers + 1, n, self.hidden_size, device=base.device))

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    @property
    def template(self) -> str:
        return self.layout

    def vectors(self) -> torch.Tensor | None:
        return self.weight if self.length else None

    def deltas(self) -> torch.Tensor | None:
        return self.delta if self.tuning == "deep" and self.length else None

    def metadata(self) -> dict[str, Any]:
        return super().metadata() | {
            "layout": self.layout, "template_markers": self.template_markers, "tuning": self.tuning,
            "init": self.init, "init_text": self.init_text, "seed": self.seed, "task": self.task,
        } | (token_fields(self.lm, self.token_ids) if self.token_ids is not None else {})

    @classmethod
    def from_file(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], lm: LanguageModel,
                  path: Path) -> TaskPrompt:
        # "vocab" only fills the vectors that the file's tensors then replace.
        prompt = cls(lm, meta["layout"], 0, meta["template_markers"], meta["tuning"], "vocab", meta["init_text"],
                     meta["seed"], meta["task"], searched_tokens(meta, lm, path))
        prompt.init = meta["init"]
        if prompt.length != tensors["weight"].shape[0]:
            raise SoftpromptError(f"{path}: layout {meta['layout']!r} does not match its {len(tensors['weight'])} "
                                  "vectors")
        prompt.load_state_dict({k: v.to(lm.device) for k, v in tensors.items()})
        return prompt


def initial_task_vectors(lm: LanguageModel, n: int, init: str, text: str, seed: int) -> torch.Tensor:
    """``n`` starting vectors: the embeddings of ``text``'s tokens (cycled or cut to n, as PEFT's text init
    does), of tokens sampled from the common vocabulary, or draws from a Gaussian fitted to the embeddings."""
    if n == 0:
        return torch.zeros(0, lm.hidden_size, device=lm.device)
    if init == "random":
        return embedding_gaussian(lm).sample(n, seed).to(lm.device)
    if init == "text":
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"] if text.strip() else []
        if not ids:
            raise SoftpromptError("text initialisation needs a non-empty text (the task's description by default); "
                                  "give --init-text, or use --init vocab or random")
        ids = (ids * (n // len(ids) + 1))[:n]
    else:
        special = set(lm.tokenizer.all_special_ids)
        pool = [i for i in range(min(lm.vocab_size, VOCAB_INIT_SIZE + len(special))) if i not in special]
        gen = torch.Generator().manual_seed(seed)
        ids = [pool[i] for i in torch.randint(len(pool), (n,), generator=gen).tolist()]
    return lm.embed(torch.tensor(ids, device=lm.device)).detach().float().clone()
