"""Crashes and concurrency, with real processes: kill -9 during training and during a checkpoint write, then
``--resume`` ends exactly where an uninterrupted run does and leaves no temporary file; two runs into one
``--out``; a ``--force`` killed midway.

The command line runs as a subprocess on a tiny local model. A ``sitecustomize`` module on the subprocess's
path slows one step down (the test's only hook into it), so that the kill lands where the test wants it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

SRC = Path(__file__).resolve().parents[1] / "src"
TEMPLATE = "the capital of [X] is [Y] ."
FACTS = {"train": [("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Italy", "Rome")],
         "dev": [("Spain", "Madrid")], "test": [("Peru", "Lima"), ("Egypt", "Cairo")]}
# Hooks: each slows the named step by SLOW seconds, after or inside it, or holds it until RELEASE exists.
HOOKS = {
    "after-checkpoint": """
import softprompt.optimizers.gradient as g
real = g.save_checkpoint
def slow(*args, **kwargs):
    real(*args, **kwargs)
    time.sleep(SLOW)
g.save_checkpoint = slow
""",
    "hold-after-checkpoint": """
import os
import softprompt.optimizers.gradient as g
real = g.save_checkpoint
def hold(*args, **kwargs):
    real(*args, **kwargs)
    deadline = time.monotonic() + 120
    while not os.path.exists(RELEASE) and time.monotonic() < deadline:
        time.sleep(0.05)
g.save_checkpoint = hold
""",
    "inside-checkpoint-write": """
import softprompt.optimizers.gradient as g
real = g.save_file
def slow(tensors, path, metadata=None):
    real(tensors, path, metadata=metadata)
    time.sleep(SLOW)  # the temporary file is complete, the rename not yet done
g.save_file = slow
""",
}


def relation(root: Path) -> Path:
    data = root / "capital"
    data.mkdir()
    for split, pairs in FACTS.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"sub": s, "obj": o}) + "\n" for s, o in pairs))
    (data / "template.txt").write_text(TEMPLATE + "\n")
    return data


def start(root: Path, model: Path, data: Path, out: Path, *extra: str, hook: str | None = None,
          slow: float = 30.0) -> subprocess.Popen:
    """The command line training a soft prompt in a new process (slowed by ``hook``, if given)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "SOFTPROMPT_CACHE": str(root / "cache"),
           "HF_HUB_OFFLINE": "1"}
    if hook is not None:
        hooks = root / f"hook-{hook}"
        hooks.mkdir(exist_ok=True)
        (hooks / "sitecustomize.py").write_text(f"import time\nSLOW = {slow}\nRELEASE = {str(root / 'release')!r}\n"
                                                + HOOKS[hook])
        env["PYTHONPATH"] = f"{hooks}{os.pathsep}{SRC}"
    command = [sys.executable, "-c", "from softprompt.launch import main; main()", "probe", "train", "--data",
               str(data), "--model", str(model), "--out", str(out), "--epochs", "3", "--patience", "3",
               "--batch-size", "1", "--lr", "0.05", "--quiet", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended first: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("run_id",)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> tuple[Path, Path, Path]:
    """(a working directory, the model, the facts), with the uninterrupted run in ``straight``."""
    root = tmp_path_factory.mktemp("crashes")
    data = relation(root)
    code, err = finish(start(root, model_dirs["causal"], data, root / "straight"))
    assert code == 0, err
    return root, model_dirs["causal"], data


@pytest.mark.parametrize("hook", ["after-checkpoint", "inside-checkpoint-write"])
def test_kill_9_then_resume_is_bit_identical(setup, hook: str) -> None:
    root, model, data = setup
    out = root / f"killed-{hook}"
    process = start(root, model, data, out, hook=hook)
    if hook == "after-checkpoint":
        wait_for(lambda: (out / "checkpoint.safetensors").is_file(), process)
    else:
        wait_for(lambda: any(out.glob(".checkpoint.safetensors.*.tmp")), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists()
    code, err = finish(start(root, model, data, out, "--resume"))
    assert code == 0, err
    straight = root / "straight"
    assert untimed(json.loads((out / "metrics.json").read_text())) == untimed(
        json.loads((straight / "metrics.json").read_text()))
    for name in ("prompt.safetensors", "checkpoint.safetensors"):  # the Adam state too, not only the prompt
        a, b = tensors(out / name), tensors(straight / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "predictions.jsonl").read_bytes() == (straight / "predictions.jsonl").read_bytes()
    assert not list(out.glob(".*.tmp"))


def test_two_runs_into_one_directory(setup) -> None:
    """The second run stops with one line while the first holds the directory; the first's files are its own."""
    root, model, data = setup
    out = root / "shared"
    first = start(root, model, data, out, hook="hold-after-checkpoint")
    wait_for(lambda: (out / "checkpoint.safetensors").is_file(), first)
    second = start(root, model, data, out, "--force", "--lr", "0.01")
    code, err = finish(second)
    assert code == 2 and err.strip().startswith("error: ") and "is in use by another run" in err, err
    assert err.strip().count("\n") == 0
    (root / "release").touch()
    code, err = finish(first)
    assert code == 0, err
    config, metrics = (json.loads((out / name).read_text()) for name in ("config.json", "metrics.json"))
    assert config["train"]["lr"] == 0.05 and config["run_id"] == metrics["run_id"]


def test_a_killed_force_leaves_no_finished_old_run(setup) -> None:
    """--force over a finished run, killed after it started: the old results are gone (never shown as the new
    run's), and the directory is an interrupted run of the new settings."""
    root, model, data = setup
    out = root / "forced"
    code, err = finish(start(root, model, data, out))
    assert code == 0, err
    process = start(root, model, data, out, "--force", "--lr", "0.01", hook="after-checkpoint")
    def new_checkpoint() -> bool:  # the old run's files go first, so the new config means a new checkpoint
        try:
            lr = json.loads((out / "config.json").read_text())["train"]["lr"]
        except (OSError, ValueError, KeyError):
            return False
        return lr == 0.01 and (out / "checkpoint.safetensors").is_file()

    wait_for(new_checkpoint, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists() and not (out / "predictions.jsonl").exists()
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 0.01
    code, err = finish(start(root, model, data, out))
    assert code == 2 and "interrupted training run" in err, err


def test_ctrl_c_while_starting_is_one_line(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # Ctrl-C arrives while the command line imports its dependencies.
    (hooks / "sitecustomize.py").write_text("import builtins\nreal = builtins.__import__\n"
                                            "def imp(name, *a, **k):\n"
                                            "    if name == 'softprompt.cli':\n        raise KeyboardInterrupt\n"
                                            "    return real(name, *a, **k)\nbuiltins.__import__ = imp\n")
    done = subprocess.run([sys.executable, "-c", "from softprompt.launch import main; main()", "--help"],
                          env={**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{SRC}"}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 130 and done.stderr == "interrupted while starting; nothing was written\n"
