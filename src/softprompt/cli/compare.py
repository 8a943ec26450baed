"""``softprompt compare``: paired significance tests between two probing runs."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.table import Table
from rich.text import Text

from softprompt.cli.common import console
from softprompt.io import write_json
from softprompt.runs import PREDICTIONS, RunDir
from softprompt.significance import METRICS, Comparison, Metric, compare_runs

COMPARE_HELP = """Is one probing run significantly better than another? Paired tests on the same test facts.

RUN_A and RUN_B are run directories written by `softprompt probe train/eval`, their predictions.jsonl files,
or directory trees of runs (every predictions.jsonl under them, e.g. one run per relation). Both must have
scored exactly the same facts (relation, subject, answer).

Prints, per metric, both macro-averages over relations and their difference (×100) with a paired bootstrap
interval at confidence 1 - --alpha (how close two runs are, e.g. whether a cheaper run is within a point of
another: the interval's lower end above -1), the p-value of a paired permutation test on the macro-average
difference, the p-value of an exact sign test on the per-fact scores, and B's wins/losses/ties. The run
that is significantly better under the permutation test (p < --alpha) is shown in bold, as the paper
boldfaces it (Qin & Eisner, 2021: p < 0.02).
"""


class MetricName(StrEnum):
    """The --metric choices (typer takes a list of an Enum, not of a Literal)."""

    P1 = "p@1"
    P10 = "p@10"
    MRR = "mrr"


def _p_value(p: float) -> str:
    return f"{p:.4f}" if p >= 0.0001 else f"{p:.1e}"


def _comparison_table(result: Comparison) -> Table:
    first = result.metrics[0]
    table = Table(title=f"A: {result.run_a}   B: {result.run_b}\n{first.n_examples} test facts, "
                        f"{first.n_relations} relations; macro-averages (×100)")
    for name in ("metric", "A", "B", "B−A", f"{100 * (1 - result.alpha):g}% interval", "p permutation", "p sign",
                 "B W/L/T"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for m in result.metrics:
        a = Text(f"{100 * m.macro_a:.1f}", style="bold" if m.better == "A" else "")
        b = Text(f"{100 * m.macro_b:.1f}", style="bold" if m.better == "B" else "")
        low, high = m.interval
        table.add_row(m.metric.upper(), a, b, f"{100 * m.difference:+.1f}", f"[{100 * low:+.1f}, {100 * high:+.1f}]",
                      _p_value(m.p_permutation),
                      _p_value(m.p_sign), f"{m.wins}/{m.losses}/{m.ties}")
    return table


def compare(
    run_a: Annotated[Path, typer.Argument(metavar="RUN_A", help="The first run (A).", show_default=False)],
    run_b: Annotated[Path, typer.Argument(metavar="RUN_B", help="The second run (B).", show_default=False)],
    metric: Annotated[list[MetricName] | None, typer.Option(
        "--metric", help="A metric to test; repeat for several (default: all of p@1, p@10, mrr).",
        show_default=False)] = None,
    permutations: Annotated[int, typer.Option(
        min=1, help="Random permutations of the permutation test (the smallest p is 1/(N+1)).")] = 10000,
    seed: Annotated[int, typer.Option(help="Seed of the permutations.")] = 0,
    alpha: Annotated[float, typer.Option(
        help="Significance level, between 0 and 1: below it, the better run is shown in bold.")] = 0.02,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the result to this JSON file.", show_default=False)] = None,
) -> None:
    metrics = [cast(Metric, name.value) for name in metric] if metric else METRICS
    for run in (run_a, run_b):
        for predictions in run.rglob(PREDICTIONS) if run.is_dir() else []:
            RunDir(predictions.parent).check_complete()
    result = compare_runs(run_a, run_b, metrics=metrics, permutations=permutations, seed=seed,
                          alpha=alpha)
    console.print(_comparison_table(result))
    console.print(result.verdict())
    if json_out is not None:
        write_json(json_out, dataclasses.asdict(result))
        console.print(f"written: {json_out}")
