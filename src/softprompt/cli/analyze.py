"""``softprompt analyze ...`` and ``softprompt report``: interpreting trained prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from softprompt.analysis import Analysis, AnalysisConfig, analyse, load_runs, nearest_tokens, prompt_vectors
from softprompt.analysis.curves import is_task_run, read_curve, read_moved
from softprompt.analysis.pipeline import PARTS
from softprompt.analysis.readings import METRICS
from softprompt.analysis.report import fmt, percent, render, screenshot, token_text
from softprompt.analysis.visualise import html_fragment, read_mixture
from softprompt.cli.common import Model, Quiet, console, load_lm, staged_data
from softprompt.errors import SoftpromptError
from softprompt.io import write_text
from softprompt.models import DEFAULT_MODEL
from softprompt.prompts import effective_prompts, load_prompt, read_prompt_file
from softprompt.tasks import load_task
from softprompt.tasks.task import Task

app = typer.Typer(help="Interpret trained prompts: nearest tokens, faithfulness, scrutability, "
                          "stochasticity, similarity and zero-shot transfer.", no_args_is_help=True)

Runs = Annotated[list[Path], typer.Argument(help="Task prompt run directories (or folders holding them).",
                                            show_default=False)]


def _tasks(names: set[str], specs: list[str], data_dir: Path | None) -> dict[str, Task]:
    given = {t.name: t for t in (load_task(s) for s in specs)}
    out = {}
    for name in sorted(names):
        if name in given:
            out[name] = given[name]
        else:
            try:
                out[name] = load_task(name)
            except SoftpromptError as err:
                raise SoftpromptError(f"runs were trained on task {name!r}, which is not built in; give its YAML "
                                      "file with --task FILE") from err
    if data_dir is not None and not data_dir.is_dir():
        raise SoftpromptError(f"--data-dir {data_dir} is not a directory")
    return out


@app.command("run")
def analyze_run(
    runs: Runs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for analysis.json and its cache.",
                                      show_default=False)],
    model: Model = DEFAULT_MODEL,
    reference_model: Annotated[str | None, typer.Option(
        help="Causal LM that scores the unembedded prompts' perplexity (default: --model if it is causal).",
        show_default=False)] = None,
    parts: Annotated[str, typer.Option(help=f"Comma-separated parts: {', '.join(PARTS)}.")] = ",".join(PARTS),
    task: Annotated[list[str] | None, typer.Option(
        "--task", help="A task YAML file for runs of a task that is not built in; repeatable.",
        show_default=False)] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the tasks' relative data paths are read from.",
                                                  show_default=False)] = None,
    eval_limit: Annotated[int, typer.Option(min=1, help="Evaluation examples per task (faithfulness, transfer).")
                          ] = 100,
    probe_size: Annotated[int, typer.Option(min=1, help="Probe inputs per task for neuron overlap.")] = 8,
    top_k: Annotated[int, typer.Option(min=1, help="Nearest tokens shown per vector.")] = 3,
    quiet: Quiet = False,
) -> None:
    """Analyse trained task prompts and write OUT/analysis.json (resumable; render it with softprompt report)."""
    if out.exists() and not out.is_dir():
        raise SoftpromptError(f"--out {out} is a file; give a folder")
    config = AnalysisConfig(parts=tuple(p.strip() for p in parts.split(",") if p.strip()), top_k=top_k,
                            eval_limit=eval_limit, probe_size=probe_size)
    lm = load_lm(model, quiet=quiet)
    found = load_runs(runs, lm)
    tasks = _tasks({r.task for r in found}, task or [], data_dir)
    data_dir = staged_data(data_dir)
    needs_data = {"faithfulness", "similarity", "transfer"} & set(config.parts)
    examples = {name: t.load("validation", data_dir) for name, t in tasks.items()} if needs_data else {}
    reference = None
    if "faithfulness" in config.parts:
        reference = load_lm(reference_model, quiet=quiet) if reference_model else (lm if lm.kind == "causal" else None)
    analysis = Analysis(lm, found, tasks, examples, config, reference)
    result = analyse(analysis, out)
    _print_summary(result)
    console.print(f"written: {out / 'analysis.json'}  (render it: softprompt report {out} -o report.html)")


def _print_summary(result: dict[str, Any]) -> None:
    if "faithfulness" in result:
        table = Table(title="faithfulness and scrutability")
        table.add_column("run", overflow="fold")  # never cut: seeds differ only at the end of their names
        for col in ("Δ_D", "Δ_Output", "top-1 agree", "soft", "unembedded", "Δ_L", "perplexity"):
            table.add_column(col, justify="right")
        for label, f in result["faithfulness"].items():
            ppl = "–" if f["perplexity"] is None else f"{f['perplexity']:.1f}"
            table.add_row(label, f"{f['distance']:.3f}", f"{f['output']:.3f}", f"{percent(f['top1_agreement'], 0)}%",
                          percent(f["soft_score"]), percent(f["hard_score"]), percent(f["performance"]), ppl)
        console.print(table)
    if "transfer" in result:
        t = result["transfer"]
        table = Table(title="zero-shot transfer (×100; change vs no prompt)")
        table.add_column("source \\ target", overflow="fold")
        for target in t["targets"]:
            table.add_column(target, justify="right")
        for source, row in t["task_scores"].items():
            table.add_row(source, *[f"{percent(row[c])} ({percent(t['change_vs_no_prompt'][source][c], sign=True)})"
                                    for c in t["targets"]])
        table.add_row("no prompt", *[percent(t["no_prompt"][c]) for c in t["targets"]])
        console.print(table)
        for c in t.get("correlations", []):
            console.print(f"Spearman({c['indicator']}, transfer gain) = {fmt(c['rho'])} (p = {fmt(c['p_value'])}, "
                          f"{c['points']} points)")


@app.command("nearest")
def analyze_nearest(
    prompt_file: Annotated[Path, typer.Argument(help="A prompt file or run directory.", show_default=False)],
    model: Model = DEFAULT_MODEL,
    top_k: Annotated[int, typer.Option(min=1, help="Tokens per vector.")] = 3,
    metric: Annotated[str, typer.Option(help=f"One of: {', '.join(METRICS)}.")] = "cosine",
) -> None:
    """The nearest vocabulary tokens of every vector of a soft, deep or task prompt."""
    lm = load_lm(model)
    prompt = load_prompt(prompt_file, lm)
    if prompt.kind == "mixture":
        raise SoftpromptError(f"{prompt_file} holds a mixture; read it with softprompt mixture show")
    found = nearest_tokens(lm, prompt_vectors(prompt), top_k, metric)
    console.print(str(prompt_file))
    table = Table(title=f"nearest tokens by {metric}")
    table.add_column("#", justify="right")
    for i in range(top_k):
        table.add_column(f"{i + 1}")
    for i, (tokens, scores) in enumerate(zip(found.tokens(lm), found.scores.tolist(), strict=True)):
        table.add_row(str(i), *[f"{token_text(t)} ({s:.2f})" for t, s in zip(tokens, scores, strict=True)])
    console.print(table)


def report(
    inputs: Annotated[list[Path], typer.Argument(
        metavar="PATH...", help="Analysis folders (from softprompt analyze run), mixture run directories, task run "
        "directories (their training curves: e.g. a transfer init run beside the task's own runs) and prompt files "
        "written by softprompt transfer project|bridge (read in the target model's vocabulary).",
        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.", show_default=False)],
    model: Annotated[str | None, typer.Option(
        help="Model for mixture runs and moved prompts (default: the one each file names).",
        show_default=False)] = None,
    title: Annotated[str, typer.Option(help="The page title.")] = "softprompt report",
    png: Annotated[Path | None, typer.Option("--screenshot", help="Also render the page to this PNG with headless "
                                             "Chromium.", show_default=False)] = None,
) -> None:
    """Render analyses, mixtures, training curves and moved prompts as one self-contained HTML page (no network
    needed to open it)."""
    analyses, mixtures, curves, moved = [], [], [], []
    for path in inputs:
        if (path / "analysis.json").is_file():
            try:
                analyses.append(json.loads((path / "analysis.json").read_text()))
            except json.JSONDecodeError as err:
                raise SoftpromptError(f"{path / 'analysis.json'}:{err.lineno}: not valid JSON ({err.msg}); "
                                      "rerun softprompt analyze run") from err
            continue
        prompt_path = path / "prompt.safetensors" if path.is_dir() else path
        if not prompt_path.is_file():
            raise SoftpromptError(f"{path} is neither an analysis folder (analysis.json), a run directory nor a "
                                  f"prompt file; analyse task runs first: softprompt analyze run {path} --out ANALYSIS")
        meta = read_prompt_file(prompt_path)[0]
        if meta["kind"] != "mixture" and is_task_run(path):
            curves.append(read_curve(path))
            continue
        if meta["kind"] != "mixture" and "transfer" in meta and not path.is_dir():
            moved.append(read_moved(path, load_lm(model or meta["model"])))
            continue
        if meta["kind"] != "mixture":
            raise SoftpromptError(f"{path} holds a {meta['kind']} prompt; analyse it first: "
                                  f"softprompt analyze run {path} --out ANALYSIS")
        lm = load_lm(model or meta["model"])
        mixture = load_prompt(prompt_path, lm)
        readings = read_mixture(mixture)
        # 2^H from the weights themselves: a file's header need not carry it.
        name = (f"{meta.get('relation', path.name)} ({meta['component_kind']}, "
                f"2^H = {effective_prompts(mixture.weights()):.2f})")
        mixtures.append((name, readings, html_fragment(readings)))
    write_text(out, render(analyses, mixtures, title, curves, moved))
    console.print(f"written: {out}")
    if png is not None:
        height = screenshot(out, png)
        console.print(f"written: {png} (the whole page, {height} px tall)")
