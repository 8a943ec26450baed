"""Candidate-answer scoring of a causal LM: one token tree per fact vs one row per (fact, candidate).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/candidates.py [--relation capital] [--facts 8] [--repeats 2]

"tree" is what softprompt runs (``CandidateScorer``: each fact's row is followed by the trie of the candidates'
proper prefixes under a 4-D attention mask, one forward pass per fact). "rows" is the plain alternative that
``tasks.scoring`` uses for multi-token choices: one row per (fact, candidate) holding the prompt and the
candidate's tokens, the positions predicting them projected. Both are first checked to give the same scores;
then they are timed in turn within each repeat, medians printed with the token positions each computes.
Data: the first --facts test facts of a geography relation under the soft prompt initialised from its
template, candidates = every distinct answer of the relation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from softprompt.engine import Engine
from softprompt.models import load_model
from softprompt.probing import geo_relation
from softprompt.probing.candidates import CandidateOptions, CandidateScorer
from softprompt.probing.probe import encode_relation
from softprompt.prompts import SoftPrompt
from softprompt.templates import Example

ROWS_PER_PASS = 64


def row_scores(engine: Engine, prompt: SoftPrompt, examples: list[Example], candidates: tuple[tuple[int, ...], ...]
               ) -> torch.Tensor:
    """(facts, candidates) summed log-probabilities, one padded row per pair."""
    pairs = [(e, c) for e in examples for c in candidates]
    out = []
    with torch.inference_mode():
        for start in range(0, len(pairs), ROWS_PER_PASS):
            chunk = pairs[start : start + ROWS_PER_PASS]
            rows = [Example((*e.input_ids, *c[:-1]), (*e.prompt_slots, *[-1] * (len(c) - 1)), e.answer_position, -1)
                    for e, c in chunk]
            batch = engine.collate(rows)
            hidden = engine.final_hidden(batch, prompt.vectors())
            width = batch.input_ids.shape[1]
            for i, (_, c) in enumerate(chunk):
                logp = engine.project(hidden[i, width - len(c) :]).log_softmax(-1)
                out.append(sum(logp[j, t] for j, t in enumerate(c)))
    return torch.stack(out).view(len(examples), len(candidates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relation", default="capital")
    parser.add_argument("--facts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    lm = load_model("smollm2-135m")
    data = encode_relation(geo_relation(args.relation), lm, candidates=CandidateOptions())
    examples = data.splits["test"][: args.facts]
    engine = Engine(lm)
    prompt = SoftPrompt(data.encoder)
    scorer = CandidateScorer(engine, data.candidates)
    tokens = data.candidates.tokens
    tree = scorer.all_scores(examples, prompt.vectors(), None)
    rows = row_scores(engine, prompt, examples, tokens)
    print(f"{args.relation}: {len(tokens)} candidates ({sum(len(t) == 1 for t in tokens)} single-token, "
          f"{sum(map(len, tokens))} tokens), {len(scorer.tree)} tree nodes; max |tree - rows| = "
          f"{(tree - rows).abs().max():.2e} (relative {((tree - rows).abs() / rows.abs()).max():.1e})")
    times: dict[str, list[float]] = {"tree": [], "rows": []}
    for _ in range(args.repeats):
        for name, run in (("tree", lambda: scorer.all_scores(examples, prompt.vectors(), None)),
                          ("rows", lambda: row_scores(engine, prompt, examples, tokens))):
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    prompt_tokens = sum(len(e) for e in examples)
    positions = {"tree": prompt_tokens + len(examples) * len(scorer.tree),
                 "rows": sum(len(e) + len(t) - 1 for e in examples for t in tokens)}
    for name, taken in times.items():
        per_fact = statistics.median(taken) / len(examples)
        print(f"{name}: {per_fact:.2f} s per fact, {positions[name] / len(examples):.0f} token positions per fact, "
              f"threads {torch.get_num_threads()}")
    print(f"rows / tree time: {statistics.median(times['rows']) / statistics.median(times['tree']):.2f}x")


if __name__ == "__main__":
    main()
