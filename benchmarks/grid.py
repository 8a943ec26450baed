"""Benchmark grids on Ray: each unit (one configuration x task x seed, ...) is one Ray task declaring its
resources, so that a grid runs as many units at once as the CPUs (or GPUs) allow, here or on a Ray cluster. Units
write their run directories and records themselves, as they did when one process ran them in turn, so resuming
and rendering do not depend on how they ran. Used by mixtures.py, discrete.py, gps.py, trex_discrete.py, nlu.py,
lama.py and zeroprompt.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """The options that say where the units run (--num-cpus, --address) and what each declares (--unit-cpus,
    --unit-gpus)."""
    parser.add_argument("--num-cpus", type=int, default=None, metavar="N",
                        help="CPUs of the local Ray instance that runs the units (default: all of this machine's)")
    parser.add_argument("--address", default=None,
                        help="run the units on an existing Ray cluster instead (its nodes must see this checkout, "
                             "the staged data and the model at the same paths)")
    parser.add_argument("--unit-cpus", type=float, default=1, metavar="C",
                        help="CPUs one unit declares, and its torch threads (default 1: --num-cpus units at once)")
    parser.add_argument("--unit-gpus", type=float, default=None, metavar="G",
                        help="GPUs one unit declares (default: 1 with --device cuda, else 0; 0.25 runs four units "
                             "on one GPU)")


def run_on_ray(jobs: Sequence[tuple[Any, ...]], work: Callable[..., str], cpus: float, gpus: float,
               num_cpus: int | None = None, address: str | None = None) -> list[str]:
    """``work(*job)`` for every job, each one Ray task declaring ``cpus`` and ``gpus``, queued in the jobs' order;
    each task's line is printed as it finishes. A failed task does not stop the others: its job's first field and
    error come back, one line each. Ray is started here (``num_cpus`` local CPUs, or the cluster at ``address``)
    unless a caller has started it."""
    if not jobs:
        return []
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False)
    try:
        task = ray.remote(work).options(num_cpus=cpus, num_gpus=gpus)
        pending = {task.remote(*job): job[0] for job in jobs}
        failed = []
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            label = pending.pop(ready)
            try:
                print(ray.get(ready), flush=True)
            except ray.exceptions.RayTaskError as err:
                failed.append(f"{label} failed: {type(err.cause).__name__}: {' '.join(str(err.cause).split())}")
                print(failed[-1], flush=True)
        return failed
    finally:
        if started:
            ray.shutdown()
