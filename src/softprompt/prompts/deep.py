"""Deeply perturbed prompts (Qin & Eisner §3.2).

Every prompt position's hidden state at every layer, including the input layer 0, gets a trainable
additive perturbation, initialised to zero so training starts from the initial prompt exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.prompts.base import TemplatePrompt
from softprompt.prompts.soft import initial_vectors
from softprompt.templates import TemplateEncoder


class DeepPrompt(TemplatePrompt):
    kind = "deep"

    def __init__(self, encoder: TemplateEncoder, init: str = "template", seed: int = 0) -> None:
        super().__init__(encoder, init)
        self.register_buffer("base", initial_vectors(encoder, init, seed))
        # deltas[0] perturbs the input vectors, deltas[l] the output of transformer layer l.
        shape = (self.num_layers + 1, self.length, self.hidden_size)
        self.delta = nn.Parameter(torch.zeros(shape, device=encoder.lm.device))

    def vectors(self) -> torch.Tensor:
        return self.base

    def deltas(self) -> torch.Tensor:
        return self.delta
