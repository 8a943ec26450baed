"""One training step of a mixture of soft prompts: rows grouped by length vs one padded batch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mixture_step.py [--relations P19 P138] [--batch 16]
        [--repeats 3]

A fact is scored under all K prompts of its mixture, and the K prompts differ in length (LPAQA's mined
T-REx prompts run from 2 to 20 words). "grouped" is the step softprompt trains with
(``MixtureObjective.backward``: the batch's K × batch rows split by ``engine.length_groups``, one engine call
per group). "padded" is the same computation as one batch with every row padded to the longest, as the
mixture code did before. Both are first checked to give the same loss and gradients; then they are timed in
turn within each repeat (so that load from other processes hits both alike), medians printed with their
ratio. Data: the first --batch single-token training facts of T-REx (../shared/data) under the relation's
mined prompts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mixtures import trex_relation

from softprompt.engine import Engine, length_groups
from softprompt.models import load_model
from softprompt.paths import shared_data_dir
from softprompt.probing.mixture import MixtureItem, MixtureObjective, encode_mixture_data, encode_prompt_set
from softprompt.probing.prompt_sets import prompt_set
from softprompt.prompts import MixturePrompt

# The staged datasets beside this checkout, unless $SOFTPROMPT_SHARED_DATA says otherwise.
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"


def padded_step(engine: Engine, mixture: MixturePrompt, items: list[MixtureItem]) -> float:
    """The mixture's loss (eq. 2) and its backward pass with all rows in one padded batch."""
    batch = engine.collate([row for item in items for row in item.rows])
    hidden = engine.final_hidden(batch, mixture.vectors(), mixture.deltas())
    logprobs = engine.project(engine.at_answers(hidden, batch)).log_softmax(-1)
    logprobs = logprobs.gather(1, batch.answer_ids[:, None])[:, 0].view(len(items), len(mixture))
    loss = -(mixture.log_weights() + logprobs).logsumexp(-1).mean()
    loss.backward()
    return loss.item()


def gradients(mixture: MixturePrompt) -> list[torch.Tensor]:
    return [p.grad.clone() for p in mixture.parameters() if p.grad is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--relations", nargs="+", default=["P19", "P138"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shared = shared_data_dir(default=SHARED_DEFAULT)
    if shared is None:
        raise SystemExit("needs ../shared/data (T-REx and the LPAQA prompts)")
    lm = load_model("smollm2-135m")
    engine = Engine(lm)
    print(f"{torch.get_num_threads()} thread(s); batch of {args.batch} facts; median of {args.repeats}")
    for name in args.relations:
        encoders, sources, _ = encode_prompt_set(prompt_set("min", name, shared).templates, lm)
        mixture = MixturePrompt(encoders, "soft", "template", 0, False, sources)
        items = encode_mixture_data(trex_relation(shared, "trex_original", name), mixture,
                                    {"train": args.batch}).splits["train"]
        lengths = [len(row) for item in items for row in item.rows]
        groups = length_groups(lengths)
        grouped_positions = sum(len(g) * max(lengths[i] for i in g) for g in groups)
        objective = MixtureObjective(engine, mixture, items, [])
        indices = list(range(len(items)))

        mixture.zero_grad()
        loss = objective.backward(indices)
        expected = gradients(mixture)
        mixture.zero_grad()
        reference = padded_step(engine, mixture, items)
        worst = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(expected, gradients(mixture),
                                                                                 strict=True))
        if abs(loss - reference) > 1e-4 * abs(reference) or worst > 1e-4:
            raise SystemExit(f"{name}: grouped and padded steps differ (loss {loss} vs {reference}, "
                             f"gradient {worst:.1e})")

        seconds: dict[str, list[float]] = {"grouped": [], "padded": []}
        for _ in range(args.repeats):
            for method in seconds:
                mixture.zero_grad()
                start = time.perf_counter()
                if method == "grouped":
                    objective.backward(indices)
                else:
                    padded_step(engine, mixture, items)
                seconds[method].append(time.perf_counter() - start)
        grouped, padded = (statistics.median(seconds[m]) for m in ("grouped", "padded"))
        print(f"{name}: K={len(mixture)}, {len(lengths)} rows of {min(lengths)}-{max(lengths)} tokens in "
              f"{len(groups)} groups; positions computed per real token: grouped "
              f"{grouped_positions / sum(lengths):.2f}, padded {len(lengths) * max(lengths) / sum(lengths):.2f}; "
              f"loss {loss:.5f} (padded {reference:.5f}), max relative gradient difference {worst:.1e}; "
              f"step grouped {grouped:.2f} s, padded {padded:.2f} s: {padded / grouped:.2f}x faster", flush=True)


if __name__ == "__main__":
    main()
