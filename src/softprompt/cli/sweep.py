"""``softprompt sweep SWEEP.yaml --out DIR``: a hyperparameter sweep on Ray Tune (``softprompt.sweep``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from softprompt.cli.common import Quiet, console, err_console, staged_data
from softprompt.cli.task import TASK_CONFIG
from softprompt.sweep import load_sweep, run_sweep

SWEEP_HELP = """Search a run's settings on Ray Tune, each trial an ordinary run directory in OUT/trials.

SWEEP.yaml names the run (task: NAME|FILE, or probe: geo:NAME|DIR), its fixed settings, a search space over
them (grid, choice, uniform, loguniform), the metric to select on, measured on the dev data held out from
training (best_dev_loss, or dev_ and a task's metric, e.g. dev_accuracy, or a probe's dev_p@1, dev_p@10,
dev_mrr) and optionally scheduler: asha (early stopping between epochs). OUT/summary.json and the printed table
rank the trials, best first. An interrupted sweep continues with --resume: finished trials are
kept, interrupted ones resume from their checkpoints, failed ones are tried again.
"""


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="The sweep file (YAML).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The sweep directory to write.", show_default=False)],
    num_cpus: Annotated[int | None, typer.Option(
        min=1, help="CPUs of the local Ray instance (default: all of this machine's).", show_default=False)] = None,
    address: Annotated[str | None, typer.Option(
        help="Run on an existing Ray cluster instead (auto, HOST:6379 or ray://HOST:10001); the model, softprompt "
             "and OUT must be reachable from its nodes.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the sweep in --out (same sweep file): finished trials are not run again.")] = False,
    quiet: Quiet = False,
) -> None:
    spec = load_sweep(sweep_file, TASK_CONFIG, staged_data(None))
    summary = run_sweep(spec, out, num_cpus, address, resume, verbose=not quiet)
    table = Table(title=f"{len(summary['trials'])} trials, best first by {summary['metric']} ({summary['mode']})")
    for col in ("trial", *spec.space, summary["metric"], "epochs", "status"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")
    for row in summary["trials"]:
        table.add_row(row["trial"], *(_value(row["config"][k]) for k in spec.space), _value(row["metric"]),
                      _value(row["epoch"]), row["status"])
    console.print(table)
    console.print(f"best trial: {summary['best'] or 'none finished'}; summary: {out / 'summary.json'}")
    failed = [row for row in summary["trials"] if row["status"] == "failed"]
    if not summary["complete"]:
        err_console.print(f"interrupted; continue with: softprompt sweep {sweep_file} --out {out} --resume",
                          style="yellow", soft_wrap=True)
        raise typer.Exit(130)
    if failed:
        err_console.print(f"{len(failed)} trial(s) failed ({failed[0]['trial']}: {failed[0]['error']}); --resume "
                          "tries them again", style="yellow", soft_wrap=True)
        raise typer.Exit(1)
