"""Prove that a refactor changed no behaviour: the same command-line runs, made with the code of an earlier
commit and with this checkout, must give bit-identical prompt tensors, metrics and predictions.

    .venv/bin/python benchmarks/layout_equivalence.py --before f002f87 [--out runs/layout-equivalence]

The earlier code runs from a temporary git worktree; each run is a subprocess with that tree's src/ first
on PYTHONPATH and one thread (with two, OpenMP's reductions are not reproducible run to run: two runs
of the same code already differ at 1e-8). Runs (the embedded SmolLM2, small limits, a few minutes in all):
probe train (soft; deep from random), probe eval, mixture train (EM with warm-up pruning; deep,
data-dependent, with drawn sparse posteriors), task train (soft prefix; deep hybrid over two seeds) and
task eval, on the embedded geography relations and a small generated sentiment task. Timing fields are
left out of the comparison, and so is the prompt-file header (a refactor may change the file format): it
is checked instead that this checkout loads the earlier code's prompt files to the same tensors.
Exit status 0 when nothing differs, 1 otherwise, 2 on a usage problem.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from softprompt.cli import main; sys.argv[0] = 'softprompt'; main()"
LIMITS = ["--max-train", "32", "--max-dev", "16", "--max-test", "32", "--batch-size", "8"]
TEMPLATES = ["The capital of [X] is [Y] .", "[X] has its capital in [Y] .", "[Y] is the capital of [X] .",
             "The capital city of [X] is [Y] ."]


def runs(out: Path, data: Path) -> dict[str, list[str]]:
    """Run name -> command-line arguments, writing under ``out``."""
    task = str(data / "task.yaml")
    return {
        "probe-soft": ["probe", "train", "--data", "geo:capital", "--mode", "soft", "--epochs", "2", *LIMITS,
                       "--quiet"],
        "probe-deep": ["probe", "train", "--data", "geo:currency", "--mode", "deep", "--init", "random",
                       "--epochs", "2", *LIMITS, "--quiet"],
        "probe-eval": ["probe", "eval", "--data", "geo:capital", "--prompt", str(out / "probe-soft"), "--split", "dev",
                       "--max", "16"],
        "mixture-em": ["mixture", "train", "--data", "geo:capital", "--prompts", str(data / "templates.txt"),
                       "--method", "em", "--top-k", "2", "--prune-after", "1", "--epochs", "3", *LIMITS, "--quiet"],
        "mixture-sparse": ["mixture", "train", "--data", "geo:capital", "--prompts", str(data / "templates.txt"),
                           "--mode", "deep", "--data-dependent", "--sparse-k", "1", "--sparse-m", "1",
                           "--sparse-draw", "sample", "--epochs", "2", *LIMITS, "--quiet"],
        "task-soft": ["task", "train", task, "--length", "4", "--epochs", "2", "--batch-size", "8", "--quiet"],
        "task-deep": ["task", "train", task, "--kind", "deep", "--layout", "hybrid", "--length", "2", "--init", "vocab",
                      "--seed", "0", "--seed", "1", "--epochs", "2", "--batch-size", "8", "--quiet"],
        "task-eval": ["task", "eval", task, "--prompt", str(out / "task-soft" / "prompt.safetensors")],
    }


def write_inputs(data: Path) -> None:
    """The mixture's templates and a small binary sentiment task, generated deterministically."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    rng = random.Random(0)
    good, bad = ["wonderful", "great", "moving", "superb", "charming"], ["dull", "awful", "boring", "weak", "messy"]
    things = ["film", "story", "cast", "ending", "script", "score"]
    for split, n in (("train", 60), ("validation", 24)):
        rows = []
        for _ in range(n):
            label = rng.randrange(2)
            words = good if label else bad
            rows.append({"text": f"The {rng.choice(things)} was {rng.choice(words)} and {rng.choice(words)}.",
                         "label": str(label)})
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "task.yaml").write_text(json.dumps({
        "name": "mini-sentiment", "description": "Is the review positive or negative?",
        "data": {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl")},
        "template": "Review: {{text}}\nSentiment:", "target": "{{label}}", "labels": {"0": "bad", "1": "good"},
        "metrics": ["accuracy", "macro_f1"],
    }, indent=1))  # JSON is YAML


def environment(tree: Path, threads: int) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(threads),
                         "MKL_NUM_THREADS": str(threads)}


def run_all(tree: Path, out: Path, data: Path, threads: int) -> None:
    env = environment(tree, threads)
    where = subprocess.run([sys.executable, "-c", "import softprompt; print(softprompt.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to((tree / "src").resolve()):
        sys.exit(f"softprompt was imported from {where}, not from {tree / 'src'}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name, args in runs(out, data).items():
        print(f"{tree.name}: {name}", flush=True)
        done = subprocess.run([sys.executable, "-c", CLI, *args, "--out", str(out / name)], env=env,
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name} failed in {tree}:\n{done.stdout}\n{done.stderr}")


def untimed(value: Any) -> Any:
    """``value`` without timing fields and run ids (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if "seconds" not in k and k not in ("threads", "run_id")}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def header_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a safetensors header, JSON values parsed and timings left out (compared and reported,
    never a failure: a refactor may change the prompt-file format)."""
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    parsed = {}
    for key, text in raw.items():
        try:
            parsed[key] = json.loads(text)
        except ValueError:
            parsed[key] = text
    return untimed(parsed)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def compare_file(before: Path, after: Path, roots: tuple[Path, Path]) -> tuple[str, bool]:
    """(what was found, whether it is a failure) for one file present in both trees; paths under the two
    output roots (``roots``) are compared as the same path."""
    if before.suffix == ".safetensors":
        same = same_tensors(tensors(before), tensors(after))
        header = "" if header_metadata(before) == header_metadata(after) else "; header metadata differs"
        return ("tensors identical" + header, False) if same else ("TENSORS DIFFER" + header, True)
    if before.suffix == ".json":
        a, b = (json.loads(path.read_text().replace(str(root), "OUT")) for path, root in zip((before, after), roots,
                                                                                           strict=True))
        if before.name == "config.json":  # a refactor may record more settings
            a, b = untimed(a), untimed(b)
            added = sorted(set(b) - set(a))
            changed = sorted(k for k in a if a[k] != b.get(k))
            return (f"same{'; added ' + ', '.join(added) if added else ''}" if not changed
                    else f"changed: {', '.join(changed)}", bool(changed))
        if untimed(a) == untimed(b):
            return "identical (timings aside)", False
        a, b = untimed(a), untimed(b)
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return f"DIFFER in {', '.join(keys)}", True
    same = before.read_bytes() == after.read_bytes()
    return ("byte-identical", False) if same else ("BYTES DIFFER", before.suffix == ".jsonl")


def loads_old_prompts(before: Path, after_src: Path, threads: int) -> list[tuple[str, str, bool]]:
    """This checkout's load_prompt on every prompt file the earlier code wrote: the same tensors?"""
    files = sorted(p for p in before.rglob("prompt.safetensors"))
    script = ("import sys, torch\nfrom softprompt import load_model, load_prompt\nlm = load_model()\n"
              "for path in sys.argv[1:]:\n    p = load_prompt(path, lm)\n"
              "    torch.save({k: v.detach().clone() for k, v in p.state_dict().items()}, path + '.loaded')\n")
    subprocess.run([sys.executable, "-c", script, *map(str, files)], env=environment(after_src, threads), check=True)
    rows = []
    for path in files:
        loaded = torch.load(str(path) + ".loaded", weights_only=True)
        Path(str(path) + ".loaded").unlink()
        ok = same_tensors(tensors(path), loaded)
        rows.append((str(path.relative_to(before)), "old file loads to the same tensors" if ok else "LOADS DIFFERENTLY",
                     not ok))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit to compare against, e.g. f002f87")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "layout-equivalence")
    # One thread: with two, OpenMP's reductions make two runs of the same code differ at 1e-8 on this CPU.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--after", help="a commit to take the later code from (default: a snapshot of this checkout)")
    parser.add_argument("--compare-only", action="store_true", help="compare OUT/before and OUT/after as they are")
    args = parser.parse_args()
    git = ["git", "-C", str(ROOT)]
    for rev in (args.before, args.after or "HEAD"):
        found = subprocess.run([*git, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], capture_output=True)
        if found.returncode:
            print(f"error: {rev} is not a commit of {ROOT}", file=sys.stderr)
            sys.exit(2)
    short = {rev: subprocess.run([*git, "rev-parse", "--short", rev], capture_output=True, text=True).stdout.strip()
             for rev in (args.before, args.after or "HEAD")}
    dirty = not args.after and subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                              capture_output=True, text=True).stdout.strip()
    out = args.out.resolve()
    if not args.compare_only:
        write_inputs(out / "data")
        for side, rev in (("before", args.before), ("after", args.after)):
            with tempfile.TemporaryDirectory() as scratch:
                if rev is None:  # a snapshot of this checkout's src/: edits made during the runs do not leak in
                    shutil.copytree(ROOT / "src", Path(scratch) / side / "src",
                                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                    run_all(Path(scratch) / side, out / side, out / "data", args.threads)
                    continue
                tree = Path(scratch) / side
                subprocess.run([*git, "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True)
                try:
                    run_all(tree, out / side, out / "data", args.threads)
                finally:
                    subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=True)
    before, after = out / "before", out / "after"
    rows = []
    for path in sorted({p.relative_to(before) for p in before.rglob("*") if p.is_file()}
                       | {p.relative_to(after) for p in after.rglob("*") if p.is_file()}):
        if path.name == ".lock":  # the run directory's lock file holds the writer's process id
            continue
        if not (before / path).is_file() or not (after / path).is_file():
            rows.append((str(path), f"only {'after' if (after / path).is_file() else 'before'}", False))
        else:
            rows.append((str(path), *compare_file(before / path, after / path, (before, after))))
    rows += loads_old_prompts(before, ROOT, args.threads)
    failures = sum(failed for *_, failed in rows)
    after_name = f"{short[args.after or 'HEAD']}{' + uncommitted changes' if dirty else ''}"
    lines = [f"# Layout equivalence: {short[args.before]} (before) against {after_name} (after)", "",
             f"{args.threads} threads; `{' '.join(sys.argv)}`", "", "| file | result |", "|---|---|"]
    lines += [f"| {path} | {result} |" for path, result, _ in rows]
    lines += ["", f"{failures} difference(s) in tensors, metrics or predictions."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
