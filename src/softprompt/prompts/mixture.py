"""Mixtures of prompts (Qin & Eisner §3.3–3.4).

    p(y | x, r) = Σ_t p(t | r, x) · p_LM(y | t, x)

over K component prompts (all hard, all soft or all deep). The mixture weights are a softmax over
learned logits, p(t | r). The data-dependent variant (§3.4) reweights them per query by how plausible
the subject is under each prompt: p(t | r, x) ∝ p(t | r) · p(x | t)^(1/T), with log T learned.

The components' vectors are stacked into one table, so a single engine call scores a query under all
K prompts (each query row says which slice of the table it reads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts.base import Prompt, TemplatePrompt, stack_deltas, stack_vectors
from softprompt.prompts.deep import DeepPrompt
from softprompt.prompts.hard import HardPrompt
from softprompt.prompts.soft import SoftPrompt
from softprompt.templates import TemplateEncoder

COMPONENT_KINDS: dict[str, type[TemplatePrompt]] = {cls.kind: cls for cls in (HardPrompt, SoftPrompt, DeepPrompt)}
# What training may change: everything, only the mixture weights (and temperature), only the prompts,
# or nothing (the initial mixture, uniformly weighted).
TUNE_CHOICES = ("both", "weights", "prompts", "none")


class MixturePrompt(Prompt):
    kind = "mixture"

    def __init__(
        self,
        encoders: Sequence[TemplateEncoder],
        component_kind: str = "soft",
        init: str | Sequence[str] = "template",
        seed: int | Sequence[int] = 0,
        data_dependent: bool = False,
        sources: Sequence[str] | None = None,
    ) -> None:
        if not encoders:
            raise SoftpromptError("a mixture needs at least one prompt")
        super().__init__(encoders[0].lm)
        if component_kind not in COMPONENT_KINDS:
            choices = ", ".join(COMPONENT_KINDS)
            raise SoftpromptError(f"unknown component kind {component_kind!r}; choose one of: {choices}")
        inits = [init] * len(encoders) if isinstance(init, str) else list(init)
        # Each component draws its random init from its own seed, so a subset keeps the same vectors.
        seeds = [seed * 1000 + k for k in range(len(encoders))] if isinstance(seed, int) else list(seed)
        if not len(inits) == len(seeds) == len(encoders):
            raise SoftpromptError(f"{len(inits)} inits and {len(seeds)} seeds for {len(encoders)} prompts")
        lm = self.lm
        self.component_kind = component_kind
        self.data_dependent = data_dependent
        # The original wording of each prompt (before any reordering for a causal LM), for reports.
        self.sources = list(sources) if sources is not None else [e.template.text for e in encoders]
        cls = COMPONENT_KINDS[component_kind]
        self.seeds = seeds
        self.components = nn.ModuleList(
            cls.from_encoder(e, init=i, seed=s) for e, i, s in zip(encoders, inits, seeds, strict=True)
        )
        self.weight_logits = nn.Parameter(torch.zeros(len(encoders), device=lm.device))
        self.log_temperature = nn.Parameter(torch.zeros((), device=lm.device)) if data_dependent else None
        lengths = [c.length for c in self.components]
        self.offsets = [sum(lengths[:k]) for k in range(len(lengths))]
        self.tune = "both"

    def __len__(self) -> int:
        return len(self.components)

    @property
    def length(self) -> int:
        return sum(c.length for c in self.components)

    @property
    def encoders(self) -> list[TemplateEncoder]:
        return [c.encoder for c in self.components]

    @property
    def inits(self) -> list[str]:
        return [c.init for c in self.components]

    def set_tune(self, tune: str) -> MixturePrompt:
        """Choose what training changes (the ablations of Qin & Eisner Table 4)."""
        if tune not in TUNE_CHOICES:
            raise SoftpromptError(f"unknown --tune {tune!r}; choose one of: {', '.join(TUNE_CHOICES)}")
        self.tune = tune
        self.components.requires_grad_(tune in ("both", "prompts"))
        self.weight_logits.requires_grad_(tune in ("both", "weights"))
        if self.log_temperature is not None:
            self.log_temperature.requires_grad_(tune in ("both", "weights"))
        return self

    def subset(self, indices: Sequence[int]) -> MixturePrompt:
        """A mixture of the chosen components, with their current parameters and mixture logits."""
        pick = list(indices)
        sub = MixturePrompt([self.encoders[k] for k in pick], self.component_kind, [self.inits[k] for k in pick],
                            [self.seeds[k] for k in pick], self.data_dependent, [self.sources[k] for k in pick])
        with torch.no_grad():
            for new, k in zip(sub.components, pick, strict=True):
                new.load_state_dict(self.components[k].state_dict())
            sub.weight_logits.copy_(self.weight_logits[pick])
            if self.log_temperature is not None:
                sub.log_temperature.copy_(self.log_temperature)
        return sub.set_tune(self.tune)

    def vectors(self) -> torch.Tensor:
        """All components' layer-0 vectors stacked, (Σ lengths, d); hard prompts enter as their words."""
        return stack_vectors(list(self.components))

    def deltas(self) -> torch.Tensor | None:
        """All components' deltas stacked, (L+1, Σ lengths, d), for deep components; else None."""
        return stack_deltas(list(self.components))

    def log_weights(self, subject_logprob: torch.Tensor | None = None) -> torch.Tensor:
        """log p(t | r), (K,); or, for a data-dependent mixture, log p(t | r, x) per query, (n, K), from
        each query's log p(x | t) under every prompt, (n, K)."""
        log_prior = self.weight_logits.log_softmax(-1)
        if not self.data_dependent:
            return log_prior
        if subject_logprob is None:
            raise ValueError("a data-dependent mixture needs each query's subject log-likelihoods")
        return (log_prior + subject_logprob * torch.exp(-self.log_temperature)).log_softmax(-1)

    def weights(self) -> list[float]:
        return self.weight_logits.detach().softmax(-1).tolist()

    @property
    def temperature(self) -> float | None:
        return None if self.log_temperature is None else math.exp(self.log_temperature.item())

    def metadata(self) -> dict[str, Any]:
        return super().metadata() | {
            "component_kind": self.component_kind,
            "templates": [e.template.text for e in self.encoders],
            "sources": self.sources,
            "inits": self.inits,
            "seeds": self.seeds,
            "prompt_token_ids": [list(e.prompt_ids) for e in self.encoders],
            "answer_space": self.encoders[0].answer_space,
            "data_dependent": self.data_dependent,
            "weights": self.weights(),
            "temperature": self.temperature,
            "effective_prompts": effective_prompts(self.weights()),
        }

    @classmethod
    def from_file(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], lm: LanguageModel, path: Path
    ) -> MixturePrompt:
        encoders = [TemplateEncoder(t, lm, answer_space=meta["answer_space"]) for t in meta["templates"]]
        for k, (encoder, ids) in enumerate(zip(encoders, meta["prompt_token_ids"], strict=True)):
            if len(encoder.prompt_ids) != len(ids):
                raise SoftpromptError(
                    f"{path}: prompt {k} ({meta['templates'][k]!r}) has {len(ids)} tokens for model "
                    f"'{meta['model']}' but {len(encoder.prompt_ids)} for '{lm.name}'; use --model {meta['model']}"
                )
        mixture = cls(encoders, meta["component_kind"], meta["inits"], meta["seeds"], meta["data_dependent"],
                      meta["sources"])
        mixture.load_state_dict(tensors)
        return mixture


def effective_prompts(weights: Sequence[float]) -> float:
    """2^H of the mixture weights (Qin & Eisner Appendix D): 1 for a single prompt, K for uniform."""
    entropy = -sum(w * math.log2(w) for w in weights if w > 0)
    return 2.0**entropy

