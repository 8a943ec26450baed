"""An example Ray Tune sweep, committed with its result: prefix prompt tuning on SST-2, lr x prompt length.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep.py [--sweep benchmarks/sweeps/sst2-prefix.yaml]
        [--num-cpus 2] [--render-only]

It runs ``softprompt sweep`` (the Python API, ``softprompt.sweep.run_sweep``) into benchmarks/cache/sweep/<name>
(ignored; rerunning continues it with --resume semantics: finished trials are not run again), keeps the summary
and each trial's timing as a record in benchmarks/results/sweep/<name>.json (committed), and renders
docs/results/sweep.md from that record (``--render-only``: from the record alone). Trials are selected on the dev
data held out from training; the evaluation accuracy (SST-2's validation split, a stratified sample) of the chosen
trial is therefore an honest estimate, and the page shows every trial's, so that the reader can see how much
selection on 64 dev examples leaves on the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

from softprompt.io import write_json, write_text
from softprompt.paths import shared_data_dir
from softprompt.sweep import load_sweep, run_sweep

ROOT = Path(__file__).resolve().parent
DOCS = ROOT.parent / "docs" / "results" / "sweep.md"
SHARED = shared_data_dir(default=ROOT.parents[1] / "shared" / "data")


def run(sweep_file: Path, num_cpus: int | None) -> dict[str, Any]:
    """Run or continue the sweep; the record: its summary, and each finished trial's training and evaluation
    seconds and epochs."""
    out = ROOT / "cache" / "sweep" / sweep_file.stem
    sweep = load_sweep(sweep_file, data_dir=SHARED)
    summary = run_sweep(sweep, out, num_cpus, resume=(out / "sweep.json").is_file(), verbose=False)
    for row in summary["trials"]:
        metrics = out / row["run"] / "metrics.json"
        if metrics.is_file():
            doc = json.loads(metrics.read_text(encoding="utf-8"))
            row["seconds"] = {"train": doc["train_seconds"], "eval": doc["eval_seconds"]}
            row["evaluated"] = doc["metrics"]["n"]
    summary["sweep"] = str(sweep_file.relative_to(ROOT.parent))
    summary["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, num_cpus {num_cpus or 'all'}"
    return summary


def number(value: float | None, scale: float = 100.0) -> str:
    return "–" if value is None else f"{scale * value:.1f}"


def setting(config: dict[str, Any], keys: list[str], sep: str) -> str:
    return sep.join(f"{k} = {config[k]:g}" if sep == ", " else f"{config[k]:g}" for k in keys)


def render(record: dict[str, Any], sweep_text: str) -> str:
    trials = record["trials"]
    keys = list(trials[0]["config"]) if trials else []
    finished = [t for t in trials if t["status"] == "finished"]
    best = next((t for t in finished if t["trial"] == record["best"]), None)
    oracle = max(finished, key=lambda t: t["metrics"]["eval_accuracy"]) if finished else None
    lines = [f"| rank | {' | '.join(keys)} | dev accuracy (selection) | eval accuracy | epochs | train s | status |",
             f"|---:|{'---:|' * len(keys)}---:|---:|---:|---:|---|"]
    for rank, t in enumerate(trials, 1):
        m = t.get("metrics", {})
        seconds = t.get("seconds", {}).get("train")
        lines.append(f"| {rank} | {setting(t['config'], keys, ' | ')} | {number(t['metric'])} "
                     f"| {number(m.get('eval_accuracy'))} | {t['epoch'] or '–'} "
                     f"| {'–' if seconds is None else f'{seconds:.0f}'} | {t['status']} |")
    summary = "The sweep has not finished: rerun the command to continue it." if not record["complete"] else ""
    if best and oracle:
        summary = (f"**Chosen on dev: {setting(best['config'], keys, ', ')}**, evaluation "
                   f"accuracy **{number(best['metrics']['eval_accuracy'])}** on {best.get('evaluated', '?')} "
                   f"validation examples (dev accuracy {number(best['metric'])}). The best evaluation score of any "
                   f"trial was {number(oracle['metrics']['eval_accuracy'])} "
                   f"({setting(oracle['config'], keys, ', ')}); choosing by it would be "
                   "selection on the evaluation data, which the sweep never does.")
    name = Path(record["sweep"]).stem
    return f"""# Example sweep: SST-2 prefix prompt tuning, learning rate x prompt length (Ray Tune)

Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep.py` (the same as `softprompt sweep
{record['sweep']} --out DIR`, plus this page). Machine: {record['machine']}; one CPU per trial, {len(trials)}
trials. Rendered from
[benchmarks/results/sweep/{name}.json](../../benchmarks/results/sweep/{name}.json).

The sweep file:

```yaml
{sweep_text.strip()}
```

{summary}

Trials, best first by {record['metric']} (the held-out dev data, {record['mode']}):

{chr(10).join(lines)}

Dev accuracy is measured on the 64 training examples held out for early stopping; with so few, neighbouring
settings tie often (ties go to the trial name) and the ranking is coarse. Each trial is an ordinary run directory
(`softprompt task eval`, `compare` and `analyze` read it).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, default=ROOT / "sweeps" / "sst2-prefix.yaml")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--render-only", action="store_true", help="render the page from the committed record")
    args = parser.parse_args()
    sweep_file = args.sweep.resolve()
    record_path = ROOT / "results" / "sweep" / f"{sweep_file.stem}.json"
    if args.render_only:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    else:
        record = run(sweep_file, args.num_cpus)
        write_json(record_path, record)
    write_text(DOCS, render(record, sweep_file.read_text(encoding="utf-8")))
    print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
