"""Gradient training of a prompt: Adam on the answer's log-loss, early stopping on dev, resumable.

A checkpoint (prompt, best prompt, Adam state, counters) is written atomically after every epoch.
Each epoch's shuffle is seeded by (seed, epoch), so a run resumed from a checkpoint replays exactly
the batches an uninterrupted run would have seen and ends with the same prompt.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from softprompt.engine import Batch, Engine, length_batches
from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write
from softprompt.prompts import Prompt
from softprompt.templates import Example


@dataclass
class TrainConfig:
    lr: float = 3e-3
    batch_size: int = 64
    max_epochs: int = 16
    patience: int = 4
    seed: int = 0
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SoftpromptError(f"learning rate must be a positive number, got {self.lr}")
        for name in ("batch_size", "max_epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise SoftpromptError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class TrainResult:
    best_epoch: int
    best_dev_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    # Seconds of training that interrupted calls had checkpointed before this call resumed them: a resumed
    # run's cost is this plus the resuming call's own time.
    earlier_seconds: float = 0.0


def mean_loss(engine: Engine, prompt: Prompt, examples: Sequence[Example], batch_size: int) -> float:
    """Mean negative log-likelihood of the gold answers."""
    total = 0.0
    with torch.inference_mode():
        for idx in length_batches(examples, batch_size):
            batch = engine.collate([examples[i] for i in idx])
            logits = engine.answer_logits(batch, prompt.vectors(), prompt.deltas())
            total += F.cross_entropy(logits, batch.answer_ids, reduction="sum").item()
    return total / len(examples)


def train_step(engine: Engine, prompt: Prompt, optimizer: torch.optim.Optimizer, batch: Batch) -> float:
    """One Adam step on a batch's mean answer log-loss; returns that loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = _backward_answer_loss(engine, prompt, batch)
    optimizer.step()
    return loss


def _backward_answer_loss(engine: Engine, prompt: Prompt, batch: Batch) -> float:
    loss = F.cross_entropy(engine.answer_logits(batch, prompt.vectors(), prompt.deltas()), batch.answer_ids)
    loss.backward()
    return loss.item()


class Objective(Protocol):
    """What ``optimise`` trains: a module whose trainable parameters minimise a loss over items.

    ``items`` are the training examples (anything with a length, for length-bucketed batches);
    ``param_groups`` are Adam's parameter groups (trainable parameters only) at base learning rate ``lr``;
    ``backward`` adds the gradient of the mean loss over the given items and returns that loss;
    ``start_epoch`` runs before each epoch's batches (EM does its E step there).
    """

    module: nn.Module
    items: Sequence[Sized]

    def param_groups(self, lr: float) -> list[dict[str, Any]]: ...

    def backward(self, indices: list[int]) -> float: ...

    def dev_loss(self) -> float: ...

    def start_epoch(self, epoch: int) -> None: ...


@dataclass
class PromptObjective:
    """The log-loss of the gold answer under one prompt."""

    engine: Engine
    module: Prompt
    items: Sequence[Example]
    dev: Sequence[Example]
    eval_batch_size: int

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.module.parameters() if p.requires_grad], "lr": lr}]

    def backward(self, indices: list[int]) -> float:
        return _backward_answer_loss(self.engine, self.module, self.engine.collate([self.items[i] for i in indices]))

    def dev_loss(self) -> float:
        return mean_loss(self.engine, self.module, self.dev, self.eval_batch_size)

    def start_epoch(self, epoch: int) -> None:
        pass


def train_prompt(
    engine: Engine,
    prompt: Prompt,
    train: Sequence[Example],
    dev: Sequence[Example],
    config: TrainConfig,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``prompt`` in place; on return it holds the parameters that scored best on dev."""
    if not train:
        raise SoftpromptError("the training split is empty: nothing to learn from")
    if not dev:
        raise SoftpromptError("the dev split is empty: early stopping needs dev data")
    if not any(p.requires_grad for p in prompt.parameters()):
        raise SoftpromptError(f"a {prompt.mode} prompt has no trainable parameters; use mode soft or deep")
    objective = PromptObjective(engine, prompt, train, dev, config.eval_batch_size)
    return optimise(objective, config, checkpoint, resume, progress)


def optimise(
    objective: Objective,
    config: TrainConfig,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
) -> TrainResult:
    """Adam on ``objective`` with early stopping on its dev loss; the module ends with its best-dev state.

    ``settings`` (besides ``config``) must match for a checkpoint to be resumed.
    """
    module = objective.module
    groups = [g for g in objective.param_groups(config.lr) if g["params"]]
    if not groups:
        raise SoftpromptError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.Adam(groups, lr=config.lr)
    identity = {"config": asdict(config), "settings": settings or {}}

    started = time.perf_counter()
    state = _load_checkpoint(checkpoint, module, optimizer, identity) if resume and checkpoint else None
    if state is None:
        initial = objective.dev_loss()
        state = {"epoch": 0, "best_epoch": 0, "best_dev_loss": initial, "bad_epochs": 0,
                 "history": [{"epoch": 0, "dev_loss": initial}]}
        best = _copy_state(module)
    else:
        state, best = state
    earlier = state.get("seconds", 0.0)  # checkpoints from before timing was kept count as 0

    for epoch in range(state["epoch"] + 1, config.max_epochs + 1):
        if state["bad_epochs"] >= config.patience:
            break
        objective.start_epoch(epoch)
        batches = length_batches(objective.items, config.batch_size, shuffle_seed=config.seed * 1_000_003 + epoch)
        total = 0.0
        for idx in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress):
            optimizer.zero_grad(set_to_none=True)
            total += objective.backward(idx) * len(idx)
            optimizer.step()
        dev_loss = objective.dev_loss()
        train_loss = total / len(objective.items)
        state["history"].append({"epoch": epoch, "train_loss": train_loss, "dev_loss": dev_loss})
        state["epoch"] = epoch
        state["seconds"] = earlier + time.perf_counter() - started
        if dev_loss < state["best_dev_loss"]:
            state.update(best_epoch=epoch, best_dev_loss=dev_loss, bad_epochs=0)
            best = _copy_state(module)
        else:
            state["bad_epochs"] += 1
        if progress:
            tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}  dev loss {dev_loss:.4f}")
        if checkpoint:
            _save_checkpoint(checkpoint, module, best, optimizer, state, identity)
    module.load_state_dict(best)
    return TrainResult(state["best_epoch"], state["best_dev_loss"], state["history"], earlier)


def _copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _save_checkpoint(
    path: Path, module: nn.Module, best: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
    state: dict[str, Any], identity: dict[str, Any],
) -> None:
    tensors = {f"prompt.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
    tensors |= {f"best.{k}": v.contiguous() for k, v in best.items()}
    optim = optimizer.state_dict()
    for index, slots in optim["state"].items():
        tensors |= {f"optim.{index}.{k}": torch.as_tensor(v).reshape(-1) if k == "step" else v
                    for k, v in slots.items()}
    meta = {"state": state, **identity, "param_groups": optim["param_groups"]}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"softprompt.checkpoint": json.dumps(meta)}))


def _load_checkpoint(
    path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, identity: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    if not path.is_file():
        return None
    # Loaded on the CPU: load_state_dict copies onto the module's and the optimizer's devices.
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["softprompt.checkpoint"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    stored = {"config": meta["config"], "settings": meta.get("settings", {})}
    if stored != identity:
        raise SoftpromptError(
            f"{path} was written with training settings {stored}, not {identity}; "
            "resume with the same settings, or start a new run directory"
        )
    module.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("prompt.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    return meta["state"], best
