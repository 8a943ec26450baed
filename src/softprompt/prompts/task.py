"""Task prompts for classification and multiple choice: trainable vectors laid out around a task's input.

A *layout* is a short pattern over the rendered task input: ``[P*20]{input}`` is prefix prompt tuning
(Lester et al.), ``[P*20]{description}\\nOptions: {options}\\n{input}`` is ZeroPrompt's hybrid prompt
(soft prompt, task description, verbalizer candidates, input), ``{input}`` with ``[P]`` markers inside
the task's own template places soft tokens within it (P-tuning style), and ``{input}`` alone is the
manual (hard) prompt. Each ``[P]`` is one vector; ``[P*N]`` is N of them. Vectors are numbered in
reading order, layout first, then the template.

Soft prompts train the vectors; deep prompts keep them fixed and train an additive perturbation of the
prompt positions at every layer, including the input (as the deep prompts of P-tuning v2 / Qin & Eisner
§3.2, here as hidden-state perturbations rather than per-layer key/value prefixes).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts.base import FORMAT, Prompt
from softprompt.prompts.soft import embedding_gaussian

LAYOUTS = {
    "manual": "{input}",
    "prefix": "[P*{n}]{input}",
    "hybrid": "[P*{n}]{description}\nOptions: {options}\n{input}",
    "hybrid-hard": "{description}\nOptions: {options}\n{input}",
    "template": "{input}",
}
INITS = ("text", "vocab", "random")
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
    mode = "task"
    kinds: ClassVar[tuple[str, ...]] = ("soft", "deep")

    def __init__(
        self,
        lm: LanguageModel,
        layout: str,
        length: int,
        template_markers: int = 0,
        kind: str = "soft",
        init: str = "text",
        init_text: str = "",
        seed: int = 0,
        task: str = "",
    ) -> None:
        nn.Module.__init__(self)  # the LAMA base class wants a template encoder; a task prompt has a layout
        if kind not in self.kinds:
            raise SoftpromptError(f"unknown task prompt kind {kind!r}; choose one of: {', '.join(self.kinds)}")
        if init not in INITS:
            raise SoftpromptError(f"unknown prompt init {init!r}; choose one of: {', '.join(INITS)}")
        self.layout = expand_layout(layout, length)
        self.kind, self.init, self.init_text, self.seed, self.task = kind, init, init_text, seed, task
        self.model_name, self.hidden_size, self.num_layers = lm.name, lm.hidden_size, lm.num_layers
        self.template_markers = template_markers
        n = count_markers(self.layout) + template_markers
        base = initial_task_vectors(lm, n, init, init_text, seed)
        if kind == "soft":
            self.weight = nn.Parameter(base)
        else:
            self.register_buffer("weight", base)
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
        return self.delta if self.kind == "deep" and self.length else None

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "mode": self.mode, "model": self.model_name, "hidden_size": self.hidden_size,
            "num_layers": self.num_layers, "layout": self.layout, "template_markers": self.template_markers,
            "kind": self.kind, "init": self.init, "init_text": self.init_text, "seed": self.seed, "task": self.task,
        }

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], lm: LanguageModel) -> TaskPrompt:
        prompt = cls(lm, meta["layout"], 0, meta["template_markers"], meta["kind"], "vocab", meta["init_text"],
                     meta["seed"], meta["task"])
        prompt.init = meta["init"]
        if prompt.length != tensors["weight"].shape[0]:
            raise SoftpromptError(f"prompt file: layout {meta['layout']!r} does not match its {len(tensors['weight'])} "
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
