"""Scoring K candidate prompts on one batch: ``softprompt.prompt_scorer.score_candidates`` vs the naive loop.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/prompt_scorer.py [--facts 32] [--inputs 8] [--k 32]
        [--boolq-inputs 4] [--boolq-k 16] [--repeats 3] [--threads 2] [--relation P19] [--prefix-swaps 0 4]
        [--out results.json]

What a discrete search step costs (AutoPrompt's swaps, GPS/RLPrompt's populations): the scores of K candidate
prompts of 5 tokens on the same batch. Five ways, timed in the same run, the same ``read`` after each:

- naive: one forward per candidate over the whole batch (``Engine.answer_logits`` for probing,
  ``tasks.scoring.query_logits`` for tasks), then ``read`` on its logits;
- batched: ``score_candidates(..., share_prefix=False)``: every candidate in one batch of rows (up to
  ``MAX_ROWS`` = 512 rows a pass), the projection at the query positions only;
- copies: ``score_candidates(..., pack=False)``: batched, and each row's part before the first prompt
  position where the candidates differ runs once; the candidates' suffixes run on a copy of its key/value
  cache each;
- scorer: ``score_candidates(...)``, the default: as copies, but the K suffixes of a row run side by side on
  one copy of the cache, kept apart by a 4-D attention mask;
- memo: the scorer with a ``PrefixMemo`` that has seen the batch (RLPrompt's next step on the same items): the
  suffixes only. Timed on populations (swap sets change the shared part from one step to the next).

``read`` is cheap and identical in all three: probing keeps the gold answer's log-probability and the best
other token's; tasks keep the log-probabilities of the two verbalizers.

Profiles (each a ratio naive / batched and naive / scorer, with seconds):

1. probe swaps: T-REx (--relation, test split, the first --facts facts with a single-token answer) under the
   trigger template "[X] [T] [T] [T] [T] [T] [Y]"; a current 5-token prompt and K candidates that replace one
   position by K tokens (AutoPrompt's swap evaluation), for each swap position 0..4; the mean over positions.
2. SST-2 swaps: the first --inputs validation sentences of the built-in sst2 task, prompt after the input
   ("{input} [P*5]", RLPrompt's placement) and before it ("[P*5]{input}", prefix: only the prompt tokens
   before the swapped one can be shared); every swap position 0..4, the mean.
3. populations: K random 5-token prompts, all different (GPS / RLPrompt), on the probe facts and on the
   SST-2 inputs with "{input} [P*5]".
4. long inputs: a population of --boolq-k prompts (RLPrompt's 16 a step) after the first --boolq-inputs BoolQ
   validation passages and questions ("{input} [P*5]").

Every time is the median of --repeats timed passes after a warm-up; within a pass the methods run in rotating
order, so that load from other processes hits them alike. The naive loop and the batched path never look at
the candidates' values (they run every position of every row for each candidate), so they are timed once per
batch, on its first candidate set; the others are timed on every candidate set. Agreement: before timing, the
naive loop scores 4 of the K candidates of every set (spread over the scorer's chunks); every other timed
output is compared with it, and on the first set all K with the timed naive loop;
the largest abs difference must be <= 1e-4 (0 means bit-identical). "positions" counts the token positions
the LM body runs (a forward pre-hook), per method, relative to naive.

The row counts are below the issue's (64 facts, 32 SST-2 inputs) to keep the run near 10 minutes on 2 CPU
cores; sharing is decided row by row, so the positions ratio does not depend on them (beyond padding).
OMP_WAIT_POLICY=PASSIVE: on a machine shared with other jobs, OpenMP threads that spin while waiting for each
other make 2-thread forwards up to 8x slower; passive waiting keeps them at their share of the cores.

Needs ../shared/data (or $SOFTPROMPT_SHARED_DATA).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from softprompt.engine import MAX_ROWS, Engine, Tokens
from softprompt.models import LanguageModel, load_model
from softprompt.paths import shared_data_dir
from softprompt.probing import load_relation
from softprompt.prompt_scorer import PrefixMemo, Queries, Read, score_candidates
from softprompt.prompts.task import TaskPrompt
from softprompt.tasks import TaskEncoder, load_task
from softprompt.tasks.scoring import collate_rows, query_logits
from softprompt.templates import TemplateEncoder

# The staged datasets beside this checkout, unless $SOFTPROMPT_SHARED_DATA says otherwise (as benchmarks/lama.py).
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"
TRIGGERS = "[X] [T] [T] [T] [T] [T] [Y]"
PROMPT_LENGTH = 5
TOLERANCE = 1e-4
SHARING = ("copies", "scorer", "memo")  # the methods that share the prefix, timed on every candidate set
CHECKED = 4  # candidates per set that the untimed agreement check runs through the naive loop


@dataclass
class Unit:
    """One batch and how the naive loop scores one candidate's vectors on it."""

    name: str
    engine: Engine
    batch: Tokens
    queries: Queries
    naive_logits: Callable[[torch.Tensor], torch.Tensor]  # (L, d) vectors -> (Q, V) query logits
    read: Read
    sets: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (K, L) candidate token ids
    memo: PrefixMemo = field(default_factory=PrefixMemo)


def probe_read(gold: torch.Tensor) -> Read:
    """(k, Q, V) logits -> (k, Q, 2): the gold answer's log-probability and the best other token's."""

    def read(logits: torch.Tensor) -> torch.Tensor:
        logp = logits.log_softmax(-1)
        index = gold.expand(len(logp), -1)[..., None]
        others = logp.scatter(-1, index, float("-inf")).amax(-1)
        return torch.stack([logp.gather(-1, index)[..., 0], others], -1)

    return read


def verbalizer_read(ids: tuple[int, ...]) -> Read:
    """(k, Q, V) logits -> (k, Q, C): the verbalizers' log-probabilities."""
    return lambda logits: logits.log_softmax(-1)[..., list(ids)]


def candidate_sets(lm: LanguageModel, k: int, positions: list[int], population: bool, gen: torch.Generator
                   ) -> dict[str, torch.Tensor]:
    """(k, 5) token ids per set: a population of k random prompts (if asked), then AutoPrompt's swap set at each
    position (a current prompt with that position replaced by k tokens)."""
    low = len(lm.tokenizer.all_special_ids)
    sets = {"population": torch.randint(low, lm.vocab_size, (k, PROMPT_LENGTH), generator=gen)} if population else {}
    current = torch.randint(low, lm.vocab_size, (PROMPT_LENGTH,), generator=gen)
    for position in positions:
        ids = current.repeat(k, 1)
        ids[:, position] = torch.randint(low, lm.vocab_size, (k,), generator=gen)
        sets[f"swap@{position}"] = ids
    return sets


def probe_unit(lm: LanguageModel, engine: Engine, shared: Path, relation: str, facts: int) -> Unit:
    rel = load_relation(shared / "qin_eisner_soft_prompts" / "db" / "trex_original" / relation,
                        templates_file=shared / "lama" / "relations.jsonl", name=relation)
    encoder = TemplateEncoder(TRIGGERS, lm)
    examples = [e for e in (encoder.encode(f.subject, f.answer) for f in rel.splits["test"]) if e is not None]
    batch = engine.collate(examples[:facts])
    gold = torch.tensor([e.answer_id for e in examples[:facts]])
    queries = Queries(torch.arange(len(batch)), batch.answer_positions)
    return Unit(f"T-REx {relation}, `{TRIGGERS}`", engine, batch, queries,
                lambda v: engine.answer_logits(batch, v), probe_read(gold))


def task_unit(lm: LanguageModel, engine: Engine, shared: Path, name: str, layout: str, inputs: int) -> Unit:
    task = load_task(name)
    examples = task.load("validation", data_dir=shared)[:inputs]
    prompt = TaskPrompt(lm, layout, 0, init="vocab")
    encoded = TaskEncoder(lm, task, prompt).encode(examples)
    batch = collate_rows(encoded.rows, lm.tokenizer.pad_token_id, engine.padding_side == "left", lm.device)
    return Unit(f"{task.name}, `{layout}`", engine, batch, Queries(batch.query_rows, batch.query_positions),
                lambda v: query_logits(engine, batch, v, None), verbalizer_read(encoded.shared_ids))


def run(method: str, unit: Unit, vectors: torch.Tensor) -> torch.Tensor:
    if method == "naive":
        with torch.inference_mode():
            return torch.cat([unit.read(unit.naive_logits(v)[None]) for v in vectors])
    return score_candidates(unit.engine, unit.batch, unit.queries, vectors, unit.read, max_rows=MAX_ROWS,
                            share_prefix=method != "batched", pack=method != "copies",
                            memo=unit.memo if method == "memo" else None)


class PositionCounter:
    """Token positions the LM body runs (rows × width of every forward), via a forward pre-hook."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        self.handle = engine.body.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, _module: object, _args: object, kwargs: dict) -> None:
        self.count += kwargs["inputs_embeds"].shape[:2].numel()


def timed(method: str, unit: Unit, vectors: torch.Tensor, counter: PositionCounter) -> tuple[float, int, torch.Tensor]:
    counter.count = 0
    start = time.perf_counter()
    out = run(method, unit, vectors)
    return time.perf_counter() - start, counter.count, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--relation", default="P19")
    parser.add_argument("--facts", type=int, default=32, help="probe facts (rows of the probing batch)")
    parser.add_argument("--inputs", type=int, default=8, help="SST-2 validation inputs (rows of the task batches)")
    parser.add_argument("--k", type=int, default=32, help="candidates per set")
    parser.add_argument("--boolq-inputs", type=int, default=4, help="BoolQ validation inputs (the long-input batch)")
    parser.add_argument("--boolq-k", type=int, default=16, help="prompts in the BoolQ population")
    parser.add_argument("--prefix-swaps", type=int, nargs="*", default=[0, 4],
                        help="swap positions timed with the prefix layout [P*5]{input}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the raw numbers as JSON")
    args = parser.parse_args()
    shared = shared_data_dir(default=SHARED_DEFAULT)
    if shared is None or not shared.is_dir():
        sys.exit("benchmarks/prompt_scorer.py needs the staged data in ../shared/data (or $SOFTPROMPT_SHARED_DATA)")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lm = load_model(args.model)
    engine = Engine(lm)
    gen = torch.Generator().manual_seed(args.seed)
    probe = probe_unit(lm, engine, shared, args.relation, args.facts)
    after = task_unit(lm, engine, shared, "sst2", "{input} [P*5]", args.inputs)
    before = task_unit(lm, engine, shared, "sst2", "[P*5]{input}", args.inputs)
    long = task_unit(lm, engine, shared, "boolq", "{input} [P*5]", args.boolq_inputs)
    everywhere = list(range(PROMPT_LENGTH))
    for unit, k, positions, population in ((probe, args.k, everywhere, True), (after, args.k, everywhere, True),
                                           (before, args.k, args.prefix_swaps, False), (long, args.boolq_k, [], True)):
        unit.sets = candidate_sets(lm, k, positions, population, gen)
    units = {"probe": probe, "sst2-after": after, "sst2-before": before, "boolq-after": long}
    counter = PositionCounter(engine)
    records: dict[str, dict] = {}
    for key, unit in units.items():
        unit_start = time.perf_counter()
        vectors = {name: lm.embed(ids).detach() for name, ids in unit.sets.items()}
        k = len(next(iter(vectors.values())))
        pick = torch.linspace(0, k - 1, CHECKED).round().long()  # spread over the scorer's chunks
        rows, width = unit.batch.input_ids.shape
        print(f"{key}: {rows} rows × {width} positions ({int(unit.batch.attention_mask.sum())} real), "
              f"K={k}, sets {', '.join(vectors)}", flush=True)
        # Warm-up and the reference of the agreement check: the naive loop on CHECKED candidates of every set.
        run("scorer", unit, vectors[next(iter(vectors))][:2])
        reference = {name: run("naive", unit, v[pick]) for name, v in vectors.items()}
        for name, v in vectors.items():  # the memo sees each population once before it is timed
            if name == "population":
                run("memo", unit, v)
        # Timing: naive and batched on the first set, the others on every set, methods in rotating order.
        first = next(iter(vectors))
        jobs = [("naive", first), ("batched", first)] + [(method, name) for name in vectors for method in SHARING
                                                         if method != "memo" or name == "population"]
        times: dict[str, list[float]] = {f"{m}/{n}": [] for m, n in jobs}
        positions: dict[str, int] = {}
        diffs: dict[str, float] = dict.fromkeys(times, 0.0)
        for r in range(args.repeats):
            shift = r % len(jobs)
            outs = {}
            for method, name in jobs[shift:] + jobs[:shift]:
                seconds, count, out = timed(method, unit, vectors[name], counter)
                times[f"{method}/{name}"].append(seconds)
                positions[f"{method}/{name}"] = count
                outs[method, name] = out
                diffs[f"{method}/{name}"] = max(diffs[f"{method}/{name}"],
                                                float((out[pick] - reference[name]).abs().max()))
            for method in ("batched", *SHARING):  # every candidate of the first set against the timed naive loop
                if (method, first) not in outs:
                    continue
                diff = float((outs[method, first] - outs["naive", first]).abs().max())
                diffs[f"{method}/{first}"] = max(diffs[f"{method}/{first}"], diff)
        worst = max(diffs.values())
        records[key] = {"unit": unit.name, "rows": rows, "width": width,
                        "real_positions": int(unit.batch.attention_mask.sum()), "k": k,
                        "sets": {n: ids.tolist() for n, ids in unit.sets.items()}, "times": times,
                        "positions": positions, "max_abs_diffs": diffs, "max_abs_diff": worst,
                        "seconds": time.perf_counter() - unit_start}
        print(f"  max abs diff vs naive: {worst:.2e}; {records[key]['seconds']:.0f} s", flush=True)
        if args.out:  # after every batch, so that a long run can be watched
            write_json(args.out, meta(args, lm, time.perf_counter() - started), records)
        if worst > TOLERANCE:
            sys.exit(f"{key}: the scores differ from the naive loop's by {worst:.2e} > {TOLERANCE}")
    counter.handle.remove()
    info = meta(args, lm, time.perf_counter() - started)
    print()
    print(f"{info['date']}, {info['machine']}, {info['cpus']} CPUs, torch threads {info['torch_threads']}, "
          f"torch {info['torch']}, transformers {info['transformers']}, {info['dtype']}, "
          f"{info['seconds']:.0f} s in all, load average at the end "
          + "/".join(f"{x:.1f}" for x in info["load_average_1_5_15min_at_end"]))
    print()
    print(render(records))
    if args.out:
        write_json(args.out, info, records)
        print(f"wrote {args.out}")


def meta(args: argparse.Namespace, lm: LanguageModel, seconds: float) -> dict:
    return {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {platform.system()}",
            "cpus": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__,
            "transformers": transformers.__version__, "model": args.model, "dtype": str(lm.model.dtype),
            "args": {k: str(v) for k, v in vars(args).items()}, "max_rows": MAX_ROWS, "seconds": seconds,
            "load_average_1_5_15min_at_end": os.getloadavg()}


def write_json(path: Path, info: dict, records: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": info, "profiles": records}, indent=1))


def median(times: dict[str, list[float]], key: str) -> float:
    return statistics.median(times[key])


def mean_cells(times: dict[str, list[float]], naive: float, method: str, sets: list[str]) -> tuple[str, str]:
    """A method's mean seconds over the candidate sets it was timed on, and its mean speed-up over naive."""
    keys = [f"{method}/{n}" for n in sets if f"{method}/{n}" in times]
    if not keys:
        return "–", "–"
    seconds = statistics.mean(median(times, k) for k in keys)
    return f"{seconds:.1f}", f"{statistics.mean(naive / median(times, k) for k in keys):.2f}×"


def render(records: dict[str, dict]) -> str:
    """The summary table (one row per profile and kind of candidate set) and the per-set detail table."""
    lines = ["| profile | batch (rows × positions) | naive s | batched s | copies s | scorer s | memo s | "
             "naive/batched | naive/copies | naive/scorer | naive/memo | positions run, batched / scorer "
             "(naive = 1) | max abs diff |", "|---|---|" + "---:|" * 11]
    detail = ["| batch | candidate set | copies s | scorer s | memo s | naive/scorer | positions run by the scorer "
              "(naive = 1) | max abs diff |", "|---|---|" + "---:|" * 6]
    for rec in records.values():
        times, positions, diffs = rec["times"], rec["positions"], rec["max_abs_diffs"]
        naive_key = next(k for k in times if k.startswith("naive/"))
        batched_key = "batched/" + naive_key.partition("/")[2]
        naive, batched = median(times, naive_key), median(times, batched_key)
        for kind in ("swap", "population"):
            sets = [k.partition("/")[2] for k in times if k.startswith("scorer/" + kind)]
            if not sets:
                continue
            label = "population" if kind == "population" else "swaps at position " + ", ".join(
                k.partition("@")[2] for k in sets) + (" (mean)" if len(sets) > 1 else "")
            (copies_s, copies_r), (scorer_s, scorer_r), (memo_s, memo_r) = (
                mean_cells(times, naive, method, sets) for method in SHARING)
            scorer_positions = statistics.mean(positions[f"scorer/{n}"] for n in sets) / positions[naive_key]
            diff = max(v for k, v in diffs.items() if k == batched_key or k.partition("/")[2] in sets)
            lines.append(f"| {rec['unit']}: {label} | {rec['rows']} × {rec['width']}, K={rec['k']} | {naive:.1f} | "
                         f"{batched:.1f} | {copies_s} | {scorer_s} | {memo_s} | {naive / batched:.2f}× | {copies_r} | "
                         f"**{scorer_r}** | {memo_r} | {positions[batched_key] / positions[naive_key]:.2f} / "
                         f"{scorer_positions:.2f} | {diff:.1e} |")
        for k in times:
            if k.startswith("scorer/"):
                name = k.partition("/")[2]
                cells = [f"{median(times, f'{m}/{name}'):.2f}" if f"{m}/{name}" in times else "–" for m in SHARING]
                worst = max(diffs[f"{m}/{name}"] for m in SHARING if f"{m}/{name}" in diffs)
                detail.append(f"| {rec['unit']} | {name} | {' | '.join(cells)} | {naive / median(times, k):.2f}× | "
                              f"{positions[k] / positions[naive_key]:.2f} | {worst:.1e} |")
    return "\n".join([*lines, "", *detail])


if __name__ == "__main__":
    main()
