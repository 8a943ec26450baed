"""Gradient descent on a prompt: Adam, early stopping on dev, resumable.

A checkpoint (prompt, best prompt, Adam state, counters, history) is written atomically after every epoch.
Each epoch's shuffle is seeded by (seed, epoch), so a run resumed from a checkpoint replays exactly the
batches an uninterrupted run would have seen and ends with the same prompt. The result's ``warnings()`` say
when the epoch limit stopped a prompt that was still improving; the run that called ``fit`` shows and records
them (a warm-up phase of a longer run stops at its limit on purpose). ``observe_epochs`` lets a caller see each
finished epoch (a sweep's per-epoch reports) without every run function passing a callback down.

Started by a launcher in several processes (``softprompt.distributed``), every process draws the same batches
of ``batch_size`` items, backpropagates its share of each and takes the same Adam step on the gradient summed
over the shares; an objective with ``dev_terms`` shares its dev loss out too, any other's is computed by the main
process. Only the main process reads and writes the checkpoint and calls the observers, so the checkpoint does not
depend on the number of processes: a run may resume with another number and ends as it would have (up to
floating point).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from softprompt import distributed
from softprompt.distributed import Processes
from softprompt.engine import length_batches
from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write
from softprompt.optimizers.base import (
    FitResult,
    Objective,
    Optimizer,
    TrainConfig,
    copy_state,
    epoch_seed,
    optimizer_tensors,
    read_checkpoint,
    restore_optimizer,
    sharded_dev,
)
from softprompt.progress import progress_bar

log = logging.getLogger(__name__)

EpochObserver = Callable[[dict[str, Any]], None]
# Set around a whole run by observe_epochs: the run pipelines build their optimizer deep inside (run_task,
# run_probe, run_mixture), and an observer must reach it without a parameter through each of them.
_OBSERVERS: ContextVar[tuple[EpochObserver, ...]] = ContextVar("epoch_observers", default=())


@contextmanager
def observe_epochs(observer: EpochObserver) -> Iterator[None]:
    """Call ``observer`` after every epoch that ``GradientDescent.fit`` (EM too) finishes within the block, with
    the epoch's history entry plus ``best_epoch`` and ``best_dev_loss``. It runs after the epoch's checkpoint is
    written, so an observer that ends the run there (a sweep's early stopping) loses nothing of it."""
    token = _OBSERVERS.set((*_OBSERVERS.get(), observer))
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


class GradientDescent(Optimizer):
    """Adam on the objective's loss with early stopping on its dev loss (Qin & Eisner §4.5). The initial
    prompt counts as epoch 0, so the result is never worse on dev than the start."""

    name = "gradient"

    def __init__(self, config: TrainConfig | None = None, progress: bool = True) -> None:
        self.config = config or TrainConfig()
        self.progress = progress

    def epoch_backward(self, objective: Objective, epoch: int) -> Callable[[list[int]], float]:
        """What one step backpropagates in this epoch: the objective's own loss (EM changes it)."""
        return objective.backward

    def fit(self, objective: Objective, checkpoint: Path | None = None, resume: bool = False,
            settings: dict[str, Any] | None = None) -> FitResult:
        config, prompt, processes = self.config, objective.prompt, distributed.current()
        groups = [g for g in objective.param_groups(config.lr) if g["params"]]
        if not groups:
            raise SoftpromptError("nothing to train: every parameter is frozen")
        params = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.Adam(groups, lr=config.lr)
        identity = {"config": asdict(config), "settings": settings or {}}
        show = self.progress and processes.is_main

        started = time.perf_counter()
        state = start_state(processes, checkpoint if resume else None, prompt, optimizer, identity)
        if state is None:
            initial = dev_loss(objective, processes)
            if not math.isfinite(initial):
                raise SoftpromptError(f"the initial prompt's dev loss is {initial}: its vectors or the data are "
                                      "degenerate; start from another prompt")
            state = {"epoch": 0, "best_epoch": 0, "best_dev_loss": initial, "bad_epochs": 0,
                     "history": [{"epoch": 0, "dev_loss": initial}]}
            best = copy_state(prompt)
        else:
            state, best = state
        earlier = state.get("seconds", 0.0)  # checkpoints from before timing was kept count as 0

        for epoch in range(state["epoch"] + 1, config.max_epochs + 1):
            if state["bad_epochs"] >= config.patience:
                break
            objective.start_epoch(epoch)
            backward = self.epoch_backward(objective, epoch)
            batches = length_batches(objective.items, config.batch_size, shuffle_seed=epoch_seed(config.seed, epoch))
            total = 0.0
            kept = state["epoch"] if checkpoint and state["epoch"] else None  # the checkpoint on disk, if any
            for idx in progress_bar(batches, f"epoch {epoch}", show):
                optimizer.zero_grad(set_to_none=True)
                if processes.parallel:
                    share = processes.shard(idx)
                    loss = processes.reduce_step(params, backward(share) if share else 0.0, len(share), len(idx))
                else:
                    loss = backward(idx)
                optimizer.step()
                if not math.isfinite(loss):
                    raise diverged(epoch, f"a training loss of {loss}", kept)
                if not all(p.isfinite().all() for p in params):
                    raise diverged(epoch, "non-finite prompt parameters", kept)
                total += loss * len(idx)
            dev = dev_loss(objective, processes)
            if not math.isfinite(dev):
                raise diverged(epoch, f"a dev loss of {dev}", kept)
            train_loss = total / len(objective.items)
            state["history"].append({"epoch": epoch, "train_loss": train_loss, "dev_loss": dev})
            state["epoch"] = epoch
            state["seconds"] = earlier + time.perf_counter() - started
            if dev < state["best_dev_loss"]:
                state.update(best_epoch=epoch, best_dev_loss=dev, bad_epochs=0)
                best = copy_state(prompt)
            else:
                state["bad_epochs"] += 1
            if show:
                log.info("epoch %d: train loss %.4f  dev loss %.4f", epoch, train_loss, dev)
            if not processes.is_main:
                continue
            if checkpoint:
                save_checkpoint(checkpoint, prompt, best, optimizer, state, identity)
            for observe in _OBSERVERS.get():
                observe(state["history"][-1] | {"best_epoch": state["best_epoch"],
                                                "best_dev_loss": state["best_dev_loss"]})
        prompt.load_state_dict(best)
        return FitResult(prompt, state["best_epoch"], state["best_dev_loss"], state["history"], earlier)


def dev_loss(objective: Objective, processes: Processes) -> float:
    """The objective's dev loss; with several processes, each computes its share of the dev examples' terms
    (every example once) if the objective has them, else the main process computes the whole."""
    if not processes.parallel:
        return objective.dev_loss()
    if sharded_dev(objective):
        return processes.sum(objective.dev_terms(processes.shard(range(objective.dev_size))))
    return processes.main_only(objective.dev_loss)


def start_state(processes: Processes, checkpoint: Path | None, module: nn.Module, optimizer: torch.optim.Optimizer,
                identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The checkpoint's state and best prompt (None without one), loaded into ``module`` and ``optimizer``. With
    several processes the main process reads it and sends the others what it loaded, the fresh prompt too, so that
    every process starts from the same parameters and only one touches the file."""
    if not processes.parallel:
        return load_checkpoint(checkpoint, module, optimizer, identity) if checkpoint else None

    def read() -> tuple[Any, ...]:
        loaded = load_checkpoint(checkpoint, module, optimizer, identity) if checkpoint else None
        tensors = {k: v.cpu() for k, v in optimizer_tensors(optimizer).items()}
        return loaded, {k: v.cpu() for k, v in copy_state(module).items()}, tensors, \
            optimizer.state_dict()["param_groups"]

    loaded, module_state, tensors, param_groups = processes.main_only(read)
    if not processes.is_main:
        module.load_state_dict(module_state)
        restore_optimizer(optimizer, tensors, param_groups)
    return loaded


def diverged(epoch: int, what: str, kept: int | None) -> SoftpromptError:
    """Training produced a non-finite loss or prompt: stop, rather than train on or report garbage."""
    where = f"; the checkpoint of epoch {kept}, the last good one, is kept" if kept is not None else ""
    return SoftpromptError(f"training diverged in epoch {epoch} ({what}){where}; start over with a lower "
                           "learning rate (--lr, and --force to replace the run)")


def save_checkpoint(
    path: Path, module: nn.Module, best: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
    state: dict[str, Any], identity: dict[str, Any],
) -> None:
    tensors = {f"prompt.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
    tensors |= {f"best.{k}": v.contiguous() for k, v in best.items()}
    tensors |= optimizer_tensors(optimizer)
    meta = {"state": state, **identity, "param_groups": optimizer.state_dict()["param_groups"]}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"softprompt.checkpoint": json.dumps(meta)}))


def load_checkpoint(
    path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, identity: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    if not path.is_file():
        return None
    meta, tensors = read_checkpoint(path, "softprompt.checkpoint", {"state", "config", "param_groups"})
    stored = {"config": meta["config"], "settings": meta.get("settings", {})}
    if stored != identity:
        raise SoftpromptError(
            f"{path} was written with training settings {stored}, not {identity}; "
            "resume with the same settings, or start a new run directory"
        )
    module.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("prompt.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    restore_optimizer(optimizer, tensors, meta["param_groups"])
    return meta["state"], best
