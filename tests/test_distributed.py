"""Data-parallel training (softprompt.distributed): two CPU processes (gloo, set up by Accelerate's PartialState from
the environment a launcher gives) with a step's 16 items shared out end with the prompt one process gets on the same
16; a dev loss over an odd number of examples scores each example once; evaluation is split between the processes
and gathered in order; a run stopped mid-way resumes with another
number of processes and ends as an uninterrupted one; the LM stays in eval mode (its dropout would show).

One spawn of two worker processes does every two-process part (starting them is most of the cost); the one-process
references run in the test process; one test launches the command line with accelerate launch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from conftest import tiny_causal
from typer.testing import CliRunner

from softprompt import distributed
from softprompt.cli import app
from softprompt.distributed import Processes
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel, load_model
from softprompt.optimizers import FitResult, TrainConfig
from softprompt.optimizers.gradient import GradientDescent, dev_loss
from softprompt.probing.objective import AnswerObjective
from softprompt.prompts import SoftPrompt, load_prompt
from softprompt.tasks import Task, TaskExample, TaskSettings, build_prompt, fit, predict
from softprompt.tasks.objective import ChoiceObjective
from softprompt.tasks.scoring import TaskEncoder
from softprompt.tasks.task import task_from_dict
from softprompt.templates import Example, TemplateEncoder

WORKERS = 2
TOLERANCE = 1e-5
TEMPLATE = "[X] is [Y] ."
EURO = ["France", "Germany", "Italy", "Spain"]
YEN = ["Japan", "Peru", "Chile", "Egypt"]
TRAIN_SECOND = ["Mozart", "Einstein", "Curie", "Bach", "Newton"]
DEV_SECOND = ["city", "language"]
PROBE_CONFIG = TrainConfig(lr=0.03, batch_size=16, max_epochs=4, patience=4, seed=1)
TASK_CONFIG = TrainConfig(lr=0.02, batch_size=16, max_epochs=3, patience=3, seed=2)
COUNTRIES = [("France", "a"), ("Germany", "b"), ("Japan", "a"), ("Italy", "b"), ("Spain", "a"), ("Peru", "b"),
             ("Chile", "a"), ("Egypt", "b")]


class Stop(Exception):
    """The stand-in for a kill: raised by every process at the same dev evaluation."""


class Counted(AnswerObjective):
    """The probing objective, stopped at its ``stop_at``-th dev loss (never, if None)."""

    stop_at: int | None = None
    calls = 0

    def _count(self) -> None:
        self.calls += 1
        if self.calls == self.stop_at:
            raise Stop

    def dev_loss(self) -> float:
        self._count()
        return super().dev_loss()

    def dev_terms(self, indices: Sequence[int]) -> float:
        self._count()
        self.scored = [*getattr(self, "scored", []), *indices]
        return super().dev_terms(indices)


def probe_data(lm: LanguageModel) -> tuple[Engine, TemplateEncoder, list[Example], list[Example]]:
    """40 training facts and 15 dev facts (an odd number: shares of 8 and 7)."""
    encoder = TemplateEncoder(TEMPLATE, lm)
    facts = [(f"{a} {b}", "euro" if a in EURO else "yen") for a in EURO + YEN for b in TRAIN_SECOND + DEV_SECOND]
    examples = [encoder.encode(s, o) for s, o in facts]
    train = [e for e, (s, _) in zip(examples, facts, strict=True) if s.split()[1] in TRAIN_SECOND]
    dev = [e for e, (s, _) in zip(examples, facts, strict=True) if s.split()[1] in DEV_SECOND][:15]
    assert len(train) == 40 and len(dev) == 15
    return Engine(lm), encoder, train, dev


def train_probe(lm: LanguageModel, checkpoint: Path | None = None, resume: bool = False,
                stop_at: int | None = None) -> tuple[SoftPrompt, FitResult]:
    engine, encoder, train, dev = probe_data(lm)
    prompt = SoftPrompt(encoder)
    objective = Counted(engine, prompt, train, dev, PROBE_CONFIG.eval_batch_size)
    objective.stop_at = stop_at
    result = GradientDescent(PROBE_CONFIG, progress=False).fit(objective, checkpoint, resume)
    return prompt, result


def capital_task() -> Task:
    return task_from_dict({"name": "capital", "description": "the capital of a country",
                           "template": "the capital of {{c}} is", "labels": {"a": "Paris", "b": "Berlin"}},
                          "capital.yaml")


def task_data(root: Path) -> tuple[Task, list[TaskExample], list[TaskExample]]:
    """40 training and 9 dev examples of a two-label task."""
    task = capital_task()
    path = root / "capital.jsonl"
    if not path.exists():  # every process may get here: each writes whole, then renames (never a half file)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text("".join(json.dumps({"c": c, "label": y}) + "\n" for c, y in (COUNTRIES * 7)[:49]))
        partial.replace(path)
    examples = task.load("train", path=path)
    return task, examples[:40], examples[40:]


def train_task(lm: LanguageModel, root: Path) -> torch.Tensor:
    task, train, dev = task_data(root)
    settings = TaskSettings(length=4)
    prompt = build_prompt(lm, task, settings, TASK_CONFIG.seed)
    fit(Engine(lm), prompt, task, train, dev, settings, TASK_CONFIG, progress=False)
    return prompt.vectors().detach().clone()


def dropout_model(root: Path) -> Path:
    """The tiny causal LM with attention dropout 0.3 (off in eval mode), saved for every process to load."""
    path = root / "model"
    lm = tiny_causal(seed=3)
    lm.model.config.attention_dropout = 0.3
    for layer in lm.model.model.layers:
        layer.self_attn.attention_dropout = 0.3
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, root: Path, port: int) -> None:
    """One of the two processes: what a launcher's environment gives it, then every two-process part."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORKERS), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    processes = distributed.current()
    torch.set_num_threads(1)
    assert (processes.rank, processes.world_size, processes.parallel) == (rank, WORKERS, True)
    lm = load_model(str(root / "model"))
    out: dict[str, object] = {}

    prompt, result = train_probe(lm)
    out["probe"], out["probe_history"] = prompt.weight.detach().clone(), result.history
    out["task"] = train_task(lm, root)

    engine, encoder, train, dev = probe_data(lm)
    objective = Counted(engine, SoftPrompt(encoder), train, dev, 256)
    out["dev_loss"], out["scored"] = dev_loss(objective, processes), objective.scored
    task, task_train, task_dev = task_data(root)
    settings = TaskSettings(length=4)
    task_prompt = build_prompt(lm, task, settings, 0)
    task_encoder = TaskEncoder(lm, task, task_prompt)
    choice = ChoiceObjective(engine, task_prompt, task_encoder.encode(task_train), task_encoder.encode(task_dev),
                             False, 4)
    out["task_dev_loss"] = dev_loss(choice, processes)
    computed: list[int] = []

    def rows(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        computed.extend(idx)
        return torch.tensor(idx, dtype=torch.float)[:, None] * torch.tensor([1.0, -1.0]), torch.tensor(idx) + 100

    out["gathered"], out["computed"] = processes.gather_rows(rows, 7), computed
    out["gathered_one"] = processes.gather_rows(lambda idx: torch.tensor(idx) + 5, 1)  # process 1's share is empty
    out["task_scores"] = processes.gather_rows(
        lambda idx: predict(engine, task_prompt, task, [task_dev[i] for i in idx], settings), len(task_dev))

    # Stopped during epoch 3, after epoch 2's checkpoint; each process is given its own checkpoint path, and only
    # the main process may write (or read) one.
    with pytest.raises(Stop):
        train_probe(lm, root / f"two-{rank}.safetensors", stop_at=4)
    # Resume what one process stopped (in the test process, before these started).
    prompt, result = train_probe(lm, root / "one.safetensors" if rank == 0 else root / "absent.safetensors",
                                 resume=True)
    out["resumed"], out["resumed_history"] = prompt.weight.detach().clone(), result.history
    out["training_mode"] = lm.model.training
    torch.save(out, root / f"worker-{rank}.pt")
    processes.end()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LanguageModel, list[dict]]:
    """(the directory, the model, each worker's results), after one process stopped a run the workers resume."""
    root = tmp_path_factory.mktemp("distributed")
    lm = load_model(str(dropout_model(root)))
    with pytest.raises(Stop):
        train_probe(lm, root / "one.safetensors", stop_at=3)  # stopped during epoch 2, after epoch 1's checkpoint
    torch.multiprocessing.spawn(worker, args=(root, free_port()), nprocs=WORKERS, join=True)
    return root, lm, [torch.load(root / f"worker-{rank}.pt") for rank in range(WORKERS)]


def assert_same_history(got: list[dict], want: list[dict]) -> None:
    """The same epochs with the same train and dev losses (Adam's step hardly changes if every gradient is scaled
    alike, so the prompt alone would not show a wrongly weighted sum; the mean losses do)."""
    assert [h.keys() for h in got] == [h.keys() for h in want]
    assert all(g[k] == pytest.approx(w[k], abs=TOLERANCE) for g, w in zip(got, want, strict=True) for k in g)


def test_one_process_is_one_plain_process() -> None:
    """Without a launcher every collective operation is the identity, and sharing out keeps everything."""
    assert distributed.current() == Processes() and not Processes().parallel and Processes().is_main
    one = Processes()
    assert one.shard([1, 2, 3]) == [1, 2, 3] and one.sum(2.5) == 2.5 and one.broadcast("x") == "x"
    assert one.main_only(lambda: 7) == 7 and one.gather_rows(lambda idx: torch.tensor(idx) * 2, 3).tolist() == [0, 2, 4]
    assert [Processes(r, 3).shard(list(range(7))) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]


def test_two_processes_with_batch_8_each_equal_one_with_batch_16(runs) -> None:
    root, lm, results = runs
    probe, probe_result = train_probe(lm)
    task = train_task(lm, root)
    for result in results:
        assert torch.allclose(result["probe"], probe.weight, atol=TOLERANCE, rtol=0)
        assert_same_history(result["probe_history"], probe_result.history)
        assert torch.allclose(result["task"], task, atol=TOLERANCE, rtol=0)
        assert result["training_mode"] is False  # the frozen LM stayed in eval mode
    assert not torch.equal(probe.weight, SoftPrompt(probe_data(lm)[1]).weight)  # it did train
    assert torch.equal(results[0]["probe"], results[1]["probe"])  # one Adam step on one gradient everywhere


def test_an_odd_dev_set_is_scored_once(runs) -> None:
    """15 dev facts over two processes: shares of 8 and 7, every fact once, the one-process loss."""
    root, lm, results = runs
    assert sorted(results[0]["scored"] + results[1]["scored"]) == list(range(15))
    assert len(results[0]["scored"]) == 8 and len(results[1]["scored"]) == 7
    engine, encoder, train, dev = probe_data(lm)
    whole = AnswerObjective(engine, SoftPrompt(encoder), train, dev, 256).dev_loss()
    assert all(r["dev_loss"] == pytest.approx(whole, abs=1e-6) for r in results)
    task, task_train, task_dev = task_data(root)
    prompt = build_prompt(lm, task, TaskSettings(length=4), 0)
    encoder = TaskEncoder(lm, task, prompt)
    choice = ChoiceObjective(engine, prompt, encoder.encode(task_train), encoder.encode(task_dev), False, 4)
    assert len(task_dev) == 9
    assert all(r["task_dev_loss"] == pytest.approx(choice.dev_loss(), abs=1e-6) for r in results)


def test_evaluation_is_split_between_the_processes_and_gathered_in_order(runs) -> None:
    """Each process computes its own share of the rows (every row once, also when a share is empty), and every
    process gets all of them in input order: 9 task examples' choice scores equal one process's."""
    root, lm, results = runs
    assert results[0]["computed"] == [0, 2, 4, 6] and results[1]["computed"] == [1, 3, 5]
    for result in results:
        columns, ids = result["gathered"]
        assert columns.tolist() == [[i, -i] for i in range(7)] and ids.tolist() == [i + 100 for i in range(7)]
        assert result["gathered_one"].tolist() == [5]
    task, _, task_dev = task_data(root)
    settings = TaskSettings(length=4)
    whole = predict(Engine(lm), build_prompt(lm, task, settings, 0), task, task_dev, settings)
    assert whole.shape == (9, 2)
    assert all(torch.allclose(r["task_scores"], whole, atol=1e-5, rtol=0) for r in results)


def test_a_stopped_run_resumes_with_another_number_of_processes(runs) -> None:
    """Two processes stopped in epoch 3 resume in one, one process stopped in epoch 2 resumes in two: both end
    as an uninterrupted run; only the main process wrote a checkpoint."""
    root, lm, results = runs
    straight, straight_result = train_probe(lm)
    assert (root / "two-0.safetensors").is_file() and not (root / "two-1.safetensors").exists()
    assert not (root / "absent.safetensors").exists()
    resumed, resumed_result = train_probe(lm, root / "two-0.safetensors", resume=True)
    assert torch.allclose(resumed.weight, straight.weight, atol=TOLERANCE, rtol=0)
    assert [h["epoch"] for h in resumed_result.history] == [0, 1, 2, 3, 4]
    for result in results:
        assert torch.allclose(result["resumed"], straight.weight, atol=TOLERANCE, rtol=0)
        assert_same_history(result["resumed_history"], straight_result.history)


def test_accelerate_launch_writes_one_run(runs, tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2 -m softprompt probe train`` (two CPU processes: accelerate's
    --cpu flag picks its one-process launcher, and its multi-process one falls back to gloo without GPUs) writes
    one run directory and one tracked run and prints once, and its prompt equals the one a single process trains
    with the same global batch; the other process's scratch directory is gone."""
    root, _, _ = runs
    data = tmp_path / "capital"
    data.mkdir()
    label = {a: "euro" if a in EURO else "yen" for a in EURO + YEN}
    facts = {"train": [(f"{a} {b}", label[a]) for a in label for b in TRAIN_SECOND],
             "dev": [(f"{a} city", label[a]) for a in label][:7], "test": [(f"{a} language", label[a]) for a in label]}
    for split, pairs in facts.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"sub": s, "obj": o}) + "\n" for s, o in pairs))
    options = ["probe", "train", "--data", str(data), "--template", TEMPLATE, "--model", str(root / "model"),
               "--epochs", "2", "--batch-size", "16", "--lr", "0.03", "--quiet"]
    tracker = ["--tracker", "tensorboard"] if find_spec("tensorboard") else []
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "SOFTPROMPT_CACHE": str(tmp_path / "cache"),
           "TMPDIR": str(scratch)}
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), "-m", "softprompt"]
    two = subprocess.run([*launcher, *options, *tracker, "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("test metrics") == 1 and two.stdout.count("facts used") == 1  # the main process's
    one = CliRunner().invoke(app, [*options, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    assert {p.name for p in (tmp_path / "two").iterdir()} == {p.name for p in (tmp_path / "one").iterdir()} | (
        {"tracking"} if tracker else set())
    assert not list(scratch.glob("softprompt-*"))
    if tracker:
        assert len(list((tmp_path / "two" / "tracking" / "tensorboard" / "two").glob("events.out.tfevents.*"))) == 1
    lm = load_model(str(root / "model"))
    a, b = (load_prompt(tmp_path / d / "prompt.safetensors", lm) for d in ("one", "two"))
    assert torch.allclose(a.weight, b.weight, atol=TOLERANCE, rtol=0)
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert_same_history(mb["history"], ma["history"])
    assert mb["test"] == pytest.approx(ma["test"], abs=1e-6)


def test_precision_follows_accelerate_and_reduced_precision_needs_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 by default; accelerate launch --mixed_precision bf16 asks for bf16, fp16 is refused (no loss scaling);
    tf32 and bf16 on the CPU are refused in one line rather than run slower."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert distributed.default_precision() == "fp32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert distributed.default_precision() == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(SoftpromptError, match="fp16 is not supported"):
        distributed.default_precision()
    with distributed.precision("fp32", None):
        assert not torch.is_autocast_enabled() and distributed.active_precision() == "fp32"
    for mode in ("tf32", "bf16"):
        refused = pytest.raises(SoftpromptError, match=f"--precision {mode} needs a GPU")
        with refused, distributed.precision(mode, "cpu"):
            pass
        assert distributed.active_precision() == "fp32"  # a refused block leaves nothing behind
