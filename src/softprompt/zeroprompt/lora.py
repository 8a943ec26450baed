"""LoRA adapters shared by every task: the stand-in for ZeroPrompt's multitask fine-tuning of the whole model.

PEFT injects the adapters into the frozen LM's attention projections (its default targets for the model type),
so the engine runs them without a new code path. They are switched on only inside ``active()``: the same
LanguageModel stays the plain frozen LM for everything else (features, other prompts, other adapters), and
several multitask models can share one LM, each under its own adapter name.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel

# Adapter names are unique per process: each SharedLoRA on one LM must keep its own weights.
_NAMES = itertools.count()


class SharedLoRA(nn.Module):
    """Rank-``rank`` LoRA adapters in ``lm``'s layers (trainable; the LM's own weights stay frozen).

    ``adapters`` holds each adapted projection's A and B (keyed by the module's path, "/" for "."), so the
    adapters are this module's state: checkpoints and the multitask file save and restore them.
    """

    def __init__(self, lm: LanguageModel, rank: int, alpha: float, seed: int) -> None:
        super().__init__()
        try:
            from peft import LoraConfig, inject_adapter_in_model
            from peft.tuners.lora import LoraLayer
        except ImportError as err:
            raise SoftpromptError("--shared lora needs PEFT; install it (pip install peft) or use --shared deep") \
                from err
        self.name = f"zeroprompt{next(_NAMES)}"
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0)
        # PEFT draws A from the global generator: seeded here, so that a run and its resumed copy start alike.
        # Several adapters on one model are intended here (each active alone), which PEFT warns about.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
            torch.manual_seed(seed)
            try:
                inject_adapter_in_model(config, lm.model, adapter_name=self.name)
            except ValueError as err:  # e.g. a model type without default target modules
                raise SoftpromptError(f"model {lm.name!r}: PEFT cannot add LoRA adapters ({err}); use --shared deep") \
                    from err
        found = [(path, m) for path, m in lm.model.named_modules()
                 if isinstance(m, LoraLayer) and self.name in m.lora_A]
        self.layers = [m for _, m in found]
        self.adapters = nn.ModuleDict({path.replace(".", "/"): nn.ModuleDict({"A": m.lora_A[self.name],
                                                                             "B": m.lora_B[self.name]})
                                       for path, m in found})
        self.switch(False)

    def switch(self, on: bool) -> None:
        for layer in self.layers:
            if on:
                layer.set_adapter(self.name)
            layer.enable_adapters(on)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the LM with these adapters (and no other) switched on."""
        self.switch(True)
        try:
            yield
        finally:
            self.switch(False)
