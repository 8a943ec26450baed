"""A discrete search's gradient step with the tokens before the prompt frozen
(``prompt_scorer.frozen_prefix_logits``) vs the whole rows under autograd, in the same run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/prefix_gradient.py [--facts 32] [--inputs 16]
        [--boolq-inputs 4] [--repeats 3] [--threads 2]

What PEZ pays every step and AutoPrompt every swap (the gradient of the loss with respect to the prompt's
vectors), on the batches of benchmarks/prompt_scorer.py: T-REx P19 facts under "[X] [T] [T] [T] [T] [T] [Y]",
SST-2 and BoolQ validation inputs under "{input} [P*5]" (PEZ's and RLPrompt's placement in
benchmarks/discrete.py; BoolQ is that benchmark's long-input task: PEZ took 15 minutes a run there). One
forward and backward with respect to a random 5-token prompt's embeddings, two ways:

- whole: every position of every row under autograd (``Engine.final_hidden``, logits at the queries);
- frozen: the tokens before each row's first prompt position run once without gradients, the rest continues
  from their key/value cache under autograd.

Each time is the median of --repeats passes after a warm-up, the two ways alternating. The logits must agree
to 1e-4 and the gradients to 1e-4 of their largest entry.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from prompt_scorer import TRIGGERS, Unit, probe_unit, task_unit  # benchmarks/prompt_scorer.py, beside this script

from softprompt.engine import Engine
from softprompt.models import load_model
from softprompt.paths import shared_data_dir
from softprompt.prompt_scorer import frozen_prefix_logits

SHARED = shared_data_dir(default=Path(__file__).resolve().parents[2] / "shared" / "data")
TOLERANCE = 1e-4


def step(unit: Unit, vectors: torch.Tensor, frozen: bool) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Seconds for one loss and backward, the query logits and the gradient with respect to ``vectors``."""
    v = vectors.detach().clone().requires_grad_(True)
    start = time.perf_counter()
    if frozen:
        logits = frozen_prefix_logits(unit.engine, unit.batch, unit.queries, v)
        assert logits is not None, "every batch here has tokens before its prompt"
    else:
        hidden = unit.engine.final_hidden(unit.batch, v)
        logits = unit.engine.project(hidden[unit.queries.rows, unit.queries.positions])
    loss = -logits.log_softmax(-1).amax(-1).mean()
    loss.backward()
    return time.perf_counter() - start, logits.detach(), v.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--relation", default="P19")
    parser.add_argument("--facts", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--boolq-inputs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if SHARED is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    engine = Engine(lm)
    units = [probe_unit(lm, engine, SHARED, args.relation, args.facts),
             task_unit(lm, engine, SHARED, "sst2", "{input} [P*5]", args.inputs),
             task_unit(lm, engine, SHARED, "boolq", "{input} [P*5]", args.boolq_inputs)]
    gen = torch.Generator().manual_seed(0)
    low = len(lm.tokenizer.all_special_ids)
    print(f"{args.model}, {torch.get_num_threads()} threads, median of {args.repeats}; trigger template {TRIGGERS}")
    print("| batch | rows × positions | whole s | frozen s | whole/frozen | max abs diff (logits, gradient/max) |")
    print("|---|---|---:|---:|---:|---:|")
    for unit in units:
        vectors = lm.embed(torch.randint(low, lm.vocab_size, (5,), generator=gen)).detach()
        step(unit, vectors, True)  # warm-up
        times: dict[bool, list[float]] = {True: [], False: []}
        outs: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
        for r in range(args.repeats):
            for frozen in ((True, False) if r % 2 == 0 else (False, True)):
                seconds, logits, grad = step(unit, vectors, frozen)
                times[frozen].append(seconds)
                outs[frozen] = (logits, grad)
        logit_diff = float((outs[True][0] - outs[False][0]).abs().max())
        grad_diff = float((outs[True][1] - outs[False][1]).abs().max() / outs[False][1].abs().max())
        whole, frozen = statistics.median(times[False]), statistics.median(times[True])
        rows, width = unit.batch.input_ids.shape
        print(f"| {unit.name} | {rows} × {width} | {whole:.2f} | {frozen:.2f} | **{whole / frozen:.2f}×** | "
              f"{logit_diff:.1e}, {grad_diff:.1e} |", flush=True)
        if max(logit_diff, grad_diff) > TOLERANCE:
            sys.exit(f"{unit.name}: the frozen prefix differs from the whole rows by {max(logit_diff, grad_diff):.2e}")


if __name__ == "__main__":
    main()
