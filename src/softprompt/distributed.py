"""Data parallelism through Accelerate: which process this is, and the few collective operations that a
data-parallel gradient step needs; and the numeric precision a run computes in.

``accelerate launch --multi_gpu --num_processes N -m softprompt ...`` (or ``torchrun --nproc_per_node N``) starts N
processes, each with its own copy of the frozen LM; ``current()`` finds them through Accelerate's ``PartialState``,
which sets up the process group (gloo on CPUs, NCCL on GPUs) and gives each process its device. A plain
``softprompt`` is one process: then every operation here returns at once, so that one-process training runs
exactly the code it ran before data parallelism existed, and the rest of the package never imports accelerate.

Why collective operations and not ``Accelerator.prepare``: what trains is a prompt's few tensors, not a module's
forward pass, and the LM must stay frozen and in eval mode (a prepared model can end up in training mode, with
dropout on: accelerate#1347). So each process backpropagates its share of a step's items through its own LM, and
only the prompt's gradients are summed across processes, each weighted by its share of the items: N processes on a
step of B items compute the gradient one process computes on the same B items, up to floating point.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, TypeVar, get_args

import torch

from softprompt.errors import SoftpromptError

T = TypeVar("T")
Rows = TypeVar("Rows", torch.Tensor, tuple[torch.Tensor, ...])
Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# What `accelerate launch --mixed_precision X` asks for, as a precision of ours (fp16 would need a loss scaler).
ACCELERATE_PRECISIONS = {"no": "fp32", "bf16": "bf16"}
_ACTIVE: list[Precision] = ["fp32"]  # the modes of the precision() blocks entered, innermost last


@dataclass(frozen=True)
class Processes:
    """This process among the run's ``world_size`` processes; ``device`` is where Accelerate runs this process's
    model (None for a plain one-process run: the caller chooses, by default the CPU)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        """The process that reads and writes the run's files and reports progress."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items``: every world_size-th one from its rank. Every item is in exactly one
        share and shares differ by at most one item, so sums over shares count each item once (a sampler that pads
        the shares to equal sizes would count some twice)."""
        return list(items[self.rank :: self.world_size])

    def reduce_step(self, params: Sequence[torch.Tensor], loss: float, count: int, total: int) -> float:
        """After this process has backpropagated the mean loss of ``count`` of a step's ``total`` items, make every
        parameter's gradient the mean over all ``total`` items (the shares' gradients weighted by their sizes and
        summed, in one all-reduce) and return the mean loss over them. A parameter that no process gave a gradient
        keeps none, as it would in one process (Adam then leaves it and its moments alone)."""
        if not self.parallel:
            return loss
        weight = count / total
        device = params[0].device
        parts = [torch.zeros(p.numel(), device=device) if p.grad is None else p.grad.reshape(-1).float() * weight
                 for p in params]
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        flat = torch.cat([*parts, flags, torch.tensor([loss * weight], device=device)])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, has_grad in zip(params, flat[-1 - len(params) : -1].tolist(), strict=True):
            p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype) if has_grad else None
            offset += p.numel()
        return float(flat[-1])

    def sum(self, value: float) -> float:
        """``value`` summed over the processes (in float64)."""
        if not self.parallel:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self._wire)
        torch.distributed.all_reduce(total)
        return float(total)

    def gather_rows(self, compute: Callable[[list[int]], Rows], count: int) -> Rows:
        """What ``compute(range(count))`` returns (a tensor or a tuple of tensors, one row per index), on every
        process, each process computing only its share of the rows (``shard``): evaluation split across the
        processes with every example scored once, none padded in or counted twice."""
        if not self.parallel:
            return compute(list(range(count)))
        share = self.shard(range(count))
        part = compute(share) if share else None
        if isinstance(part, torch.Tensor):
            part = part.cpu()
        elif part is not None:
            part = tuple(t.cpu() for t in part)
        parts: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(parts, part)
        first = next(p for p in parts if p is not None)
        single = isinstance(first, torch.Tensor)
        columns = [first] if single else list(first)
        out = [t.new_empty((count, *t.shape[1:])) for t in columns]
        for rank, got in enumerate(parts):
            if got is not None:
                for whole, piece in zip(out, [got] if single else got, strict=True):
                    whole[rank :: self.world_size] = piece
        return out[0] if single else tuple(out)  # type: ignore[return-value]

    def broadcast(self, value: T) -> T:
        """The main process's ``value``, on every process (pickled: for small objects, such as a checkpoint's
        state; tensors should be on the CPU, or they arrive on the main process's device)."""
        if not self.parallel:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, device=self._wire)
        return box[0]

    def main_only(self, compute: Callable[[], T]) -> T:
        """``compute()`` run by the main process alone, and its result, or the user error it raised, on every
        process: a refused checkpoint stops all of them instead of leaving the others waiting."""
        if not self.parallel:
            return compute()
        result, error = None, None
        if self.is_main:
            try:
                result = compute()
            except SoftpromptError as err:
                error = str(err)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise SoftpromptError(error)
        return result

    def barrier(self) -> None:
        """Wait until every process is here."""
        if self.parallel:
            torch.distributed.barrier()

    def end(self) -> None:
        """Wait for every process, then take the process group down (NCCL complains at exit otherwise)."""
        if self.parallel and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    @property
    def _wire(self) -> torch.device:
        """Where collective operations' tensors must live: the GPU for NCCL, the CPU for gloo."""
        return self.device if self.device is not None and self.device.type == "cuda" else torch.device("cpu")


def launched() -> bool:
    """Whether a launcher started this process: torchrun (and accelerate launch with several processes) sets
    WORLD_SIZE; accelerate launch always sets ACCELERATE_MIXED_PRECISION, also for one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "ACCELERATE_MIXED_PRECISION" in os.environ


@cache
def current() -> Processes:
    """This process's place among the run's processes; one plain process unless a launcher started it. Accelerate
    initialises the process group on the first call: on the GPUs if there are any (unless accelerate launch --cpu
    said otherwise), else on the CPU with gloo."""
    if not launched():
        return Processes()
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    return Processes(state.process_index, state.num_processes, torch.device(state.device))


def default_precision() -> Precision:
    """The precision ``accelerate launch --mixed_precision`` asked for, else fp32."""
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if asked not in ACCELERATE_PRECISIONS:
        raise SoftpromptError(f"accelerate launch --mixed_precision {asked} is not supported; use bf16 or no (fp16 "
                              "needs loss scaling, which prompt training does not do)")
    return ACCELERATE_PRECISIONS[asked]  # type: ignore[return-value]


@contextmanager
def precision(mode: Precision, device: torch.device | str | None) -> Iterator[None]:
    """Compute in ``mode`` within the block: fp32 as is; tf32 runs float32 matrix products on a GPU's TF32 units
    (10-bit mantissa, float32 range); bf16 also autocasts the forward pass to bfloat16. Prompt parameters, their
    gradients and Adam's state stay float32 in every mode. The reduced modes are for GPUs only: a CPU has no TF32,
    and bfloat16 there is slower, not faster."""
    kind = torch.device(device).type if device is not None else "cpu"
    if mode != "fp32" and kind != "cuda":
        raise SoftpromptError(f"--precision {mode} needs a GPU, and this process runs on the {kind}; leave it at "
                              "fp32, or run on a GPU (accelerate launch on a GPU machine)")
    _ACTIVE.append(mode)
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        if mode == "fp32":
            yield
            return
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        if mode == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        _ACTIVE.pop()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def active_precision() -> Precision:
    """The precision of the innermost ``precision`` block (fp32 outside any): what a run records in its
    config.json, since it changes the numbers."""
    return _ACTIVE[-1]
