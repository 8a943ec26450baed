"""The bad-input catalogue: every kind of bad input we know of, given to the command line as a user would.

Each must end with exit code 2 and one line on stderr that names the file or field and says what to do,
with no traceback, and must leave the run directory (``--out``) exactly as it was: no new, changed or
half-written file. docs/reliability.md lists these cases and their outcomes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file
from test_cli import invoke

TEMPLATE = "the capital of [X] is [Y] ."
FACTS = {"train": [("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo")], "dev": [("Italy", "Rome")],
         "test": [("Peru", "Lima"), ("Egypt", "Cairo")]}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SOFTPROMPT_SHARED_DATA", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no ../shared/data here


class World:
    """The files a case builds on, made on demand in the test's directory."""

    def __init__(self, root: Path, models: dict[str, Path]) -> None:
        self.root, self.models = root, models
        self.model = str(models["causal"])
        self.out = root / "out"

    def path(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def relation(self, name: str = "capital", template: str | bytes = TEMPLATE) -> Path:
        for split, pairs in FACTS.items():
            self.path(f"{name}/{split}.jsonl", "".join(json.dumps({"sub": s, "obj": o}) + "\n" for s, o in pairs))
        self.path(f"{name}/template.txt", template if isinstance(template, bytes) else template + "\n")
        return self.root / name

    def trained(self) -> Path:
        """A finished soft-prompt run (its prompt file is the run's)."""
        run = self.root / "trained"
        if not (run / "metrics.json").is_file():
            result = invoke("probe", "train", "--data", self.relation(), "--model", self.model, "--out", run,
                            "--epochs", 1, "--quiet")
            assert result.exit_code == 0, result.output
        return run

    def prompt_file(self, meta_edit: Callable[[dict], None] | None = None,
                    tensors: dict[str, torch.Tensor] | None = None) -> Path:
        """A soft prompt file, its metadata and tensors changed as asked."""
        path = self.trained() / "prompt.safetensors"
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["softprompt"])
            stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if meta_edit:
            meta_edit(meta)
        target = self.root / "edited.safetensors"
        save_file(tensors or stored, str(target), metadata={"softprompt": json.dumps(meta)})
        return target

    def task(self, yaml_text: str | bytes, rows: str | bytes | None = None, suffix: str = "jsonl") -> Path:
        data = self.path(f"task/data.{suffix}", rows if rows is not None else "".join(
            json.dumps({"text": t, "label": y}) + "\n" for t, y in [("France", "a"), ("Japan", "b")] * 6))
        text = yaml_text if isinstance(yaml_text, bytes) else yaml_text.replace("DATA", str(data))
        return self.path("task/task.yaml", text)


TASK = ("name: capital\ndescription: the capital\ndata: {train: DATA, validation: DATA}\n"
        'template: "the capital of {{text}} is"\ntarget: "{{label}}"\nlabels: {a: Paris, b: Berlin}\n')


@dataclass
class Case:
    """One bad input: the command it is given to, and fragments its one line must contain."""

    name: str
    command: Callable[[World], list[object]]
    fragments: tuple[str, ...]
    # Files under --out the error may change, with what they become (e.g. a damaged checkpoint set aside).
    allowed: Callable[[World], set[Path]] = lambda w: set()


def probe(w: World, data: object, *extra: object) -> list[object]:
    return ["probe", "train", "--data", data, "--model", w.model, "--out", w.out, "--epochs", 1, "--quiet", *extra]


def evaluate(w: World, prompt: object, *extra: object) -> list[object]:
    return ["probe", "eval", "--data", w.relation(), "--model", w.model, "--out", w.out, "--prompt", prompt, *extra]


def task_train(w: World, task: Path, *extra: object) -> list[object]:
    return ["task", "train", task, "--model", w.model, "--out", w.out, "--epochs", 1, "--quiet", *extra]


def finished(w: World) -> list[object]:
    w.out = w.trained()
    return probe(w, w.relation())


def interrupted(w: World, checkpoint: bytes | None = None, lr: float = 3e-3) -> list[object]:
    w.out = w.root / "interrupted"
    shutil.copytree(w.trained(), w.out)
    (w.out / "metrics.json").unlink()
    if checkpoint is not None:
        (w.out / "checkpoint.safetensors").write_bytes(checkpoint)
    return probe(w, w.relation(), "--resume", "--lr", lr)


def mixture(w: World, prompts: object, *extra: object) -> list[object]:
    return ["mixture", "train", "--data", w.relation(), "--prompts", prompts, "--model", w.model, "--out", w.out,
            "--epochs", 2, "--quiet", *extra]


def analysis_folder(w: World, text: str) -> Path:
    return w.path("analysis/analysis.json", text).parent


CASES = [
    # --- probe: data and templates
    Case("data path missing", lambda w: probe(w, w.root / "nowhere"), ("nowhere", "no such file or directory")),
    Case("split directory without split files", lambda w: probe(w, w.path("empty/readme.txt", "x").parent),
         ("found none of train.jsonl", "put at least one split file there")),
    Case("malformed JSONL line", lambda w: probe(w, w.path("bad/test.jsonl", '{"sub": "a", "obj": "b"}\n{oops\n'),
                                                 "--template", TEMPLATE), ("test.jsonl, line 2", "malformed JSON")),
    Case("fact without its keys", lambda w: probe(w, w.path("keys/test.jsonl", '{"subject": "a"}\n'),
                                                  "--template", TEMPLATE), ("line 1", 'needs the keys "sub"')),
    Case("facts not UTF-8", lambda w: probe(w, w.path("latin/test.jsonl", '{"sub": "caf\xe9", "obj": "b"}\n'
                                                      .encode("latin-1")), "--template", TEMPLATE),
         ("test.jsonl, line 1", "not UTF-8", "save the file as UTF-8")),
    Case("template without [Y]", lambda w: probe(w, w.relation(), "--template", "[X] is"), ("[Y]", "[X] was born")),
    Case("template.txt not UTF-8", lambda w: probe(w, w.relation("latin", "le capital de [X] est [Y] \xe9"
                                                                 .encode("latin-1"))), ("template.txt", "UTF-8")),
    Case("templates file without the relation", lambda w: probe(
        w, w.relation(), "--templates", w.path("rel.jsonl", '{"relation": "P1", "template": "[X] in [Y] ."}\n')),
        ("has no template for relation 'capital'",)),
    Case("unknown geo relation", lambda w: probe(w, "geo:moons"), ("unknown demo relation 'moons'",)),
    Case("subject longer than the model reads", lambda w: probe(
        w, w.path("long/test.jsonl", json.dumps({"sub": " ".join(["France"] * 200), "obj": "Paris"}) + "\n"),
        "--template", TEMPLATE), ("tokens long, more than model", "shorten it")),
    # --- probe: models
    Case("unknown model", lambda w: [*probe(w, w.relation()), "--model", "no/such-model"], ("unknown model",)),
    Case("random bytes as a GGUF", lambda w: [*probe(w, w.relation()),
        "--model", w.path("m.gguf", bytes(range(256)) * 40)], ("m.gguf", "not a readable GGUF model")),
    Case("model with damaged weights", lambda w: [*probe(w, w.relation()), "--model", damaged_model(w)],
         ("cannot load it", "check its files")),
    # --- probe: run directories
    Case("--out is a file", lambda w: [*probe(w, w.relation()), "--out", w.path("file.txt", "x")], ("is a file",)),
    Case("--out holds a finished run", finished, ("already holds a finished run", "--force")),
    Case("--out holds an interrupted run", lambda w: interrupted(w)[:-3], ("interrupted training run", "--resume")),
    Case("--resume with other settings", lambda w: interrupted(w, lr=0.5), ("started with other settings (train)",)),
    Case("--resume on an empty checkpoint", lambda w: interrupted(w, b""), ("checkpoint is damaged", "--force"),
         lambda w: {w.out / "checkpoint.safetensors", w.out / "checkpoint.safetensors.damaged"}),
    Case("--resume on a truncated checkpoint", lambda w: interrupted(
        w, (w.trained() / "checkpoint.safetensors").read_bytes()[:100]), ("checkpoint is damaged",),
         lambda w: {w.out / "checkpoint.safetensors", w.out / "checkpoint.safetensors.damaged"}),
    Case("--resume and --force together", lambda w: probe(w, w.relation(), "--resume", "--force"),
         ("--resume", "--force")),
    Case("learning rate 0", lambda w: probe(w, w.relation(), "--lr", 0), ("learning rate must be a positive",)),
    Case("learning rate nan", lambda w: probe(w, w.relation(), "--lr", "nan"), ("learning rate must be a positive",)),
    # --- probe eval: prompt files
    Case("prompt file missing", lambda w: evaluate(w, w.root / "none.safetensors"), ("prompt file not found",)),
    Case("prompt file of random bytes", lambda w: evaluate(w, w.path("x.safetensors", b"\x00" * 64)),
         ("x.safetensors", "not a softprompt prompt file")),
    Case("mixture prompt given to probe eval", lambda w: evaluate(w, trained_mixture(w)),
         ("holds a mixture prompt", "mixture train --tune none")),
    Case("prompt for another hidden size", lambda w: [*evaluate(w, w.trained()), "--model", w.models["causal64"]],
         ("hidden size 32", "--model")),
    Case("prompt metadata without hidden_size", lambda w: evaluate(
        w, w.prompt_file(lambda m: m.pop("hidden_size"))), ("edited.safetensors", "hidden_size")),
    Case("prompt tensor of the wrong shape", lambda w: evaluate(
        w, w.prompt_file(tensors={"weight": torch.zeros(2, 32)})), ("edited.safetensors", "weight")),
    Case("prompt with another template", lambda w: evaluate(w, w.trained(), "--template", "[X] lies in [Y] ."),
         ("brings its own template",)),
    # --- mixtures
    Case("prompt set named without staged data", lambda w: mixture(w, "min"),
         ("names a prompt set", "--prompt-root")),
    Case("prompt set file with a bad template", lambda w: mixture(w, w.path("set.txt", "[X] is [Y] .\n[X] is\n")),
         ("set.txt, line 2", "[Y]")),
    Case("--prune-after without --top-k", lambda w: mixture(w, w.path("set.txt", TEMPLATE + "\n"), "--prune-after",
                                                            1), ("--prune-after", "--top-k")),
    Case("--prune-after leaves no epoch", lambda w: mixture(
        w, w.path("set.txt", TEMPLATE + "\n[X] has [Y] .\n"), "--top-k", 1, "--prune-after", 2),
        ("leaves no epoch",)),
    Case("--sparse-draw sample without --sparse-m", lambda w: mixture(
        w, w.path("set.txt", TEMPLATE + "\n"), "--sparse-draw", "sample"), ("--sparse-m",)),
    Case("mixture show of a soft prompt", lambda w: ["mixture", "show", w.trained(), "--model", w.model],
         ("not a mixture",)),
    # --- tasks
    Case("unknown task", lambda w: task_train(w, "no-such-task"), ("unknown task 'no-such-task'",)),
    Case("task YAML not valid", lambda w: task_train(w, w.task("name: [unclosed\n")), ("task.yaml", "not valid YAML")),
    Case("task YAML unknown field", lambda w: task_train(w, w.task(TASK + "colour: blue\n")),
         ("unknown field(s) colour",)),
    Case("task YAML not UTF-8", lambda w: task_train(w, w.task(TASK.replace("the capital\n", "la capitale \xe9\n")
                                                               .encode("latin-1"))), ("task.yaml", "UTF-8")),
    Case("task YAML alias bomb", lambda w: task_train(w, w.task(TASK.replace(
        "labels: {a: Paris, b: Berlin}", "x: &a [1,1,1,1,1,1,1,1,1]\ny: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "z: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nlabels: {a: [*c,*c,*c,*c,*c,*c,*c,*c,*c], b: Berlin}"))),
        ("task.yaml",)),
    Case("label that is not a string", lambda w: task_train(w, w.task(TASK.replace("a: Paris", "a: [1, 2]"))),
         ("labels",)),
    Case("template that renders a huge range", lambda w: task_train(w, w.task(TASK.replace(
        "the capital of {{text}} is", "{{ range(10**8) | list | length }}"))), ("capital",)),
    Case("target not among the labels", lambda w: task_train(w, w.task(TASK, "".join(
        json.dumps({"text": "France", "label": "z"}) + "\n" for _ in range(12)))), ("data.jsonl:1", "is not one of")),
    Case("CSV with another delimiter", lambda w: task_train(w, w.task(TASK, "text;label\n" + "France;a\n" * 12, "csv")),
         ("data.csv", "';'")),
    Case("CSV not UTF-8", lambda w: task_train(w, w.task(TASK, ("text,label\n" + "caf\xe9,a\n" * 12).encode("latin-1"),
                                                         "csv")), ("data.csv", "UTF-8")),
    Case("layout without vectors to train", lambda w: task_train(w, w.task(TASK), "--layout", "manual"),
         ("has no [P] positions to train",)),
    Case("task eval of a probing prompt", lambda w: ["task", "eval", w.task(TASK), "--model", w.model, "--prompt",
                                                     w.trained() / "prompt.safetensors", "--out", w.out],
         ("not a task prompt",)),
    Case("task predict: prompt field not an index", lambda w: [
        "task", "predict", w.task(TASK), "--model", w.model, "--input",
        w.path("in.jsonl", '{"text": "France", "prompt": "first"}\n'), "--output", w.out / "p.jsonl"],
        ("in.jsonl, input 1", "field 'prompt'")),
    # --- analysis, report, compare
    Case("analyze a folder without runs", lambda w: ["analyze", "run", w.path("none/x.txt", "").parent, "--out", w.out,
                                                     "--model", w.model], ("holds no prompt runs",)),
    Case("analyze an unknown part", lambda w: ["analyze", "run", w.trained(), "--out", w.out, "--model", w.model,
                                               "--parts", "vibes"], ("unknown analysis part(s) vibes",)),
    Case("report of a broken analysis.json", lambda w: [
        "report", analysis_folder(w, '{"runs": [\n'), "-o", w.out / "r.html"], ("analysis.json:2", "not valid JSON")),
    Case("report of an analysis of another shape", lambda w: [
        "report", analysis_folder(w, '{"runs": [{"label": 1}], "readings": {}}'), "-o", w.out / "r.html"],
        ("does not have the fields",)),
    Case("compare a run with a missing one", lambda w: ["compare", w.trained(), w.root / "missing"], ("missing",)),
    Case("compare a run that did not finish", lambda w: ["compare", w.trained(), interrupted(w) and w.out],
         ("did not finish", "--resume")),
]


def damaged_model(w: World) -> Path:
    target = w.root / "damaged-model"
    shutil.copytree(w.models["causal"], target)
    (target / "model.safetensors").write_bytes(b"\x00" * 100)
    return target


def trained_mixture(w: World) -> Path:
    run = w.root / "mixture"
    result = invoke("mixture", "train", "--data", w.relation(), "--prompts", w.path("pair.txt", TEMPLATE + "\n"),
                    "--model", w.model, "--out", run, "--epochs", 1, "--quiet")
    assert result.exit_code == 0, result.output
    return run


def snapshot(root: Path) -> dict[Path, str]:
    """Every file under ``root`` with a hash of its content."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()} \
        if root.is_dir() else {}


def test_the_catalogue_is_large():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    world = World(tmp_path, model_dirs)
    args = case.command(world)
    out = world.out
    before = snapshot(out)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in result.output, result.stderr
    for fragment in case.fragments:
        assert fragment in line, line
    after = snapshot(out)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert changed <= case.allowed(world), sorted(map(str, changed))


def test_every_case_is_documented():
    """docs/reliability.md lists every kind of bad input this file tests."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert [c.name for c in CASES if f"| {c.name} |" not in doc] == []
