"""The optimizer interface: what is optimised (a prompt, through an ``Objective``) is kept apart from how
(an ``Optimizer``), as DSPy keeps programs apart from teleprompters.

An objective binds a prompt to its training data and scoring: it adds the gradient of the loss over some
training items to the prompt's parameters, and it measures the loss on dev data. An optimizer fits the
prompt (in place) and returns it with its history. Gradient descent and EM implement it on top of
``backward``; a discrete search (PEZ, a genetic search) or a policy-gradient learner would implement ``fit``
from ``dev_loss`` and the objective's scores; a projector fit would do the same on pairs of prompts (see
docs/design.md, "Optimizers").
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeGuard

import torch
from safetensors import SafetensorError, safe_open

from softprompt.engine import EVAL_BATCH_SIZE
from softprompt.errors import SoftpromptError
from softprompt.prompts import Prompt

# name -> class; every Optimizer subclass that names itself registers here.
OPTIMIZERS: dict[str, type[Optimizer]] = {}


@dataclass
class TrainConfig:
    """Settings of the gradient optimizers (Qin & Eisner §4.5's defaults, with lr 3e-3: see docs/design.md)."""

    lr: float = 3e-3
    batch_size: int = 64
    max_epochs: int = 16
    patience: int = 4
    seed: int = 0
    eval_batch_size: int = EVAL_BATCH_SIZE

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SoftpromptError(f"learning rate must be a positive number, got {self.lr}")
        for name in ("batch_size", "max_epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise SoftpromptError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class FitResult:
    """A fitted prompt (the best on dev) and how it got there."""

    prompt: Prompt
    best_epoch: int  # the best evaluation's epoch, or step for a discrete search
    best_dev_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    # Seconds of fitting that interrupted calls had checkpointed before this call resumed them: a resumed
    # run's cost is this plus the resuming call's own time.
    earlier_seconds: float = 0.0

    def warnings(self) -> list[str]:
        """What the history says was left undone. Early stopping ends a run after epochs without improvement,
        so a best epoch that is also the last one means the epoch limit stopped a prompt still improving."""
        if not self.history:
            return []
        if "step" in self.history[-1]:  # a discrete search, evaluated every so many steps
            last = self.history[-1]["step"]
            if 0 < self.best_epoch == last:
                return [f"the best dev score came at the last evaluation (step {last}): the search was still "
                        "improving when it stopped; search for more steps (--steps)"]
            return []
        last = self.history[-1]["epoch"]
        if 0 < self.best_epoch == last:
            return [f"the best dev loss came at the last epoch ({last}): the prompt was still improving when "
                    "training stopped; train for more epochs (--epochs) or with a higher learning rate (--lr)"]
        return []


class Objective(Protocol):
    """A prompt's loss on its training data, and on dev data for model selection.

    ``items`` are the training items (anything with a length, for length-bucketed batches);
    ``param_groups`` are the trainable parameters as Adam's groups at base learning rate ``lr``;
    ``backward`` adds the gradient of the mean loss over the given items and returns that loss;
    ``start_epoch`` runs before each epoch's batches (to seed an objective's own sampling per epoch).
    """

    prompt: Prompt
    items: Sequence[Sized]

    def param_groups(self, lr: float) -> list[dict[str, Any]]: ...

    def backward(self, indices: list[int]) -> float: ...

    def dev_loss(self) -> float: ...

    def start_epoch(self, epoch: int) -> None: ...


class ShardedDevObjective(Objective, Protocol):
    """An objective whose dev loss is a sum of one term per dev example (a mean's terms are each loss divided by
    the count), so that data-parallel processes can each compute some of the terms and sum them: every example is
    counted once, with nothing padded or repeated. ``dev_terms(range(dev_size))`` equals ``dev_loss()`` up to
    floating point; the terms of no examples sum to 0."""

    @property
    def dev_size(self) -> int: ...

    def dev_terms(self, indices: Sequence[int]) -> float: ...


def sharded_dev(objective: Objective) -> TypeGuard[ShardedDevObjective]:
    """Whether the objective offers its dev loss as per-example terms (``ShardedDevObjective``)."""
    return hasattr(objective, "dev_terms") and hasattr(objective, "dev_size")


class Optimizer(ABC):
    """Fits an objective's prompt; ``settings`` (besides the optimizer's own) must match for a checkpoint to be
    resumed."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            OPTIMIZERS[cls.name] = cls

    @abstractmethod
    def fit(self, objective: Objective, checkpoint: Path | None = None, resume: bool = False,
            settings: dict[str, Any] | None = None) -> FitResult: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's randomness (shuffle, sampling): a resumed run replays the same epochs."""
    return seed * 1_000_003 + epoch


def copy_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """A torch optimizer's per-parameter state (Adam's moments and step counts) as named tensors, for a
    safetensors checkpoint: ``optim.<parameter index>.<slot>``."""
    return {f"optim.{index}.{k}": torch.as_tensor(v).reshape(-1) if k == "step" else v
            for index, slots in optimizer.state_dict()["state"].items() for k, v in slots.items()}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      param_groups: list[dict[str, Any]] | None = None) -> None:
    """Load the state ``optimizer_tensors`` wrote (with the stored ``param_groups``, else the optimizer's own)."""
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
    optimizer.load_state_dict({"state": slots, "param_groups": param_groups or optimizer.state_dict()["param_groups"]})


def read_checkpoint(path: Path, header: str, required: set[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON metadata (under ``header``, with the ``required`` keys) and tensors of a safetensors checkpoint.
    A damaged one is moved aside (``.damaged``, kept for inspection, out of the next start's way) and refused in
    one line. Tensors load on the CPU: load_state_dict copies them onto the module's and optimizer's devices."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()[header])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if not isinstance(meta, dict):
            raise TypeError("the metadata is not an object")
        if missing := required - set(meta):
            raise KeyError(f"no {', '.join(sorted(missing))}")
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        damaged = path.with_name(path.name + ".damaged")
        os.replace(path, damaged)
        raise SoftpromptError(f"{path}: the checkpoint is damaged ({type(err).__name__}: {str(err)[:80]}); it was "
                              f"moved to {damaged.name}; start over with --force") from err
    return meta, tensors
