"""Scoring a task under an instruction prompt: the common beginning of the rows run once
(``prompt_scorer.common_prefix_logits``) vs every row run whole, in the same run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/instruction_prefix.py [--tasks sst2 rte agnews]
        [--repeats 3] [--threads 2]

What GPS pays per prompt: the dev set (§4.3.2: 32 training examples, seed 0) scored under each of the three
handcrafted prompts G⁰ of ``tasks.gps.initial_layouts`` (the instruction, then the input). Both ways go through
``tasks.scoring.choice_scores`` (length batches, answer positions only); "whole rows" turns the shared path
off. Each time is the median of --repeats passes after a warm-up, the two ways alternating; the scores must
agree to 1e-4. "positions" counts the token positions the LM body runs (a forward pre-hook), relative to
whole rows.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

from softprompt.engine import Engine
from softprompt.models import load_model
from softprompt.paths import shared_data_dir
from softprompt.prompts.task import TaskPrompt
from softprompt.tasks import load_task
from softprompt.tasks.gps import gps_dev_indices, initial_layouts
from softprompt.tasks.scoring import Encoded, TaskEncoder, choice_scores

SHARED = shared_data_dir(default=Path(__file__).resolve().parents[2] / "shared" / "data")
TOLERANCE = 1e-4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="*", default=["sst2", "rte", "agnews"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if SHARED is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    engine = Engine(lm)
    positions = [0]
    engine.body.register_forward_pre_hook(
        lambda _m, _a, kwargs: positions.__setitem__(0, positions[0] + kwargs["inputs_embeds"].shape[:2].numel()),
        with_kwargs=True)
    print("| task | prompt | rows | whole rows s | shared s | speed-up | positions | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.tasks:
        task = load_task(name)
        train = task.load("train", SHARED)
        dev = [train[i] for i in gps_dev_indices([e.label for e in train], task.num_choices, 0)]
        for number, layout in enumerate(initial_layouts(task), start=1):
            encoded = TaskEncoder(lm, task, TaskPrompt(lm, layout, 0, tuning="hard", task=name)).encode(dev)

            def score(shared: bool, encoded: Encoded = encoded) -> tuple[float, int, torch.Tensor]:
                positions[0] = 0
                off = mock.patch("softprompt.tasks.scoring.common_prefix_logits", lambda *_a, **_k: None)
                with contextlib.nullcontext() if shared else off:
                    start = time.perf_counter()
                    out = choice_scores(engine, encoded)
                    return time.perf_counter() - start, positions[0], out

            score(True), score(False)  # warm-up
            times: dict[bool, list[float]] = {True: [], False: []}
            counts, outs = {}, {}
            for r in range(args.repeats):
                for shared in (r % 2 == 0, r % 2 == 1):
                    seconds, counts[shared], outs[shared] = score(shared)
                    times[shared].append(seconds)
            diff = float((outs[True] - outs[False]).abs().max())
            whole, shared = statistics.median(times[False]), statistics.median(times[True])
            print(f"| {name} | G⁰ #{number} | {len(encoded.rows)} | {whole:.2f} | {shared:.2f} | {whole / shared:.2f}× "
                  f"| {counts[True] / counts[False]:.2f} | {diff:.1e} |", flush=True)
            if diff > TOLERANCE:
                sys.exit(f"{name}: the shared path differs from whole rows by {diff:.2e}")


if __name__ == "__main__":
    main()
