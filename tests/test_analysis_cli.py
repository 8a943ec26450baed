"""``softprompt analyze ...`` and ``softprompt report`` on user tasks and a tiny local model; the report
opened in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import huggingface_hub.constants
import pytest
from test_cli import assert_user_error, invoke

from softprompt.analysis.report import SECTIONS, headless_command

COUNTRIES = ["France", "Germany", "Japan", "Italy", "Spain", "Peru"]
TASKS = {
    "capital": ('name: capital\ndescription: the capital of a country\ndata: {train: capital.jsonl, validation: '
                'capital.jsonl}\ntemplate: "the capital of {{c}} is"\ntarget: "{{label}}"\n'
                "labels: {a: Paris, b: Berlin}\n",
                lambda i, c: {"c": c, "label": "ab"[i % 2]}),
    "language": ('name: language\ndescription: the language of a country\ndata: {train: language.jsonl, '
                 'validation: language.jsonl}\ntemplate: "in {{c}} one speaks"\ntarget: "{{label}}"\n'
                 'choices: ["{{x}}", "{{y}}"]\n',
                 lambda i, c: {"c": c, "x": "French", "y": "German", "label": i % 2}),
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> tuple[Path, Path]:
    """Two user tasks with two seeds each, trained through the CLI: (task folder, runs folder)."""
    root = tmp_path_factory.mktemp("analysis")
    tasks, runs = root / "tasks", root / "runs"
    tasks.mkdir()
    for name, (yaml_text, row) in TASKS.items():
        (tasks / f"{name}.yaml").write_text(yaml_text)
        rows = [row(i, c) for i, c in enumerate(COUNTRIES * 4)]
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        result = invoke("task", "train", tasks / f"{name}.yaml", "--data-dir", tasks, "--model", model_dirs["causal"],
                        "--out", runs / name, "--length", 3, "--init", "vocab", "--epochs", 1, "--quiet",
                        "--seed", 0, "--seed", 1)
        assert result.exit_code == 0, result.output
    return tasks, runs


def analyze(trained: tuple[Path, Path], model: Path, out: Path, *extra: object) -> object:
    tasks, runs = trained
    return invoke("analyze", "run", runs, "--out", out, "--model", model, "--task", tasks / "capital.yaml",
                  "--task", tasks / "language.yaml", "--data-dir", tasks, "--eval-limit", 8, "--probe-size", 2,
                  "--quiet", *extra)


def test_analyze_and_report_open_offline_in_chromium(trained, model_dirs, tmp_path: Path, chromium: str) -> None:
    result = analyze(trained, model_dirs["causal"], tmp_path / "analysis")
    assert result.exit_code == 0, result.output
    assert "faithfulness and scrutability" in result.output and "Spearman(frobenius" in result.output
    doc = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert [r["label"] for r in doc["runs"]] == ["capital/seed-0", "capital/seed-1", "language/seed-0",
                                                  "language/seed-1"]

    page = tmp_path / "report.html"
    result = invoke("report", tmp_path / "analysis", "--out", page, "--screenshot", tmp_path / "shot.png")
    assert result.exit_code == 0, result.output
    text = page.read_text()
    for key in SECTIONS:
        assert f"<section id='{key}'>" in text
    assert "Not computed" not in text
    assert "capital/seed-1" in text and "t-SNE" in text and "Spearman" in text
    # Offline: nothing is fetched; every image is inline.
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", text)
    assert "@import" not in text and "url(" not in text
    assert text.count("<img src='data:image/png;base64,") == 4  # t-SNE, similarity, transfer, scatter
    shot = (tmp_path / "shot.png").read_bytes()
    assert shot[:4] == b"\x89PNG"
    assert text.index("<section id='faithfulness'>") < text.index("<section id='readings'>")  # figures first

    profile = tmp_path / "profile"
    done = subprocess.run([*headless_command(chromium, str(profile)), "--enable-logging=stderr", "--v=0",
                           "--window-size=1280,1000", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'data-images-loaded="4/4"' in done.stdout, done.stdout[:500]
    assert "Uncaught" not in done.stderr and "Failed to load resource" not in done.stderr
    # The screenshot (1280 px wide) is the whole page, not its first 2400 px (PNG's IHDR holds its height).
    page_height = int(re.search(r'data-page-height="(\d+)"', done.stdout).group(1))
    assert page_height > 2400 and int.from_bytes(shot[20:24], "big") >= page_height


def test_partial_analysis_says_what_is_missing(trained, model_dirs, tmp_path: Path) -> None:
    result = analyze(trained, model_dirs["causal"], tmp_path / "a", "--parts", "readings,stochasticity")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert "transfer" not in doc and "faithfulness" not in doc
    result = invoke("report", tmp_path / "a", "-o", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.html").read_text()
    assert text.count("Not computed") == 4 and "No mixture runs were given" in text

    nearest = invoke("analyze", "nearest", trained[1] / "capital" / "seed-0", "--model", model_dirs["causal"],
                     "--top-k", 2, "--metric", "euclidean")
    assert nearest.exit_code == 0, nearest.output
    assert "nearest tokens by euclidean" in nearest.output


def test_user_errors(trained, model_dirs, tmp_path: Path) -> None:
    model = model_dirs["causal"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(invoke("analyze", "run", empty, "--out", tmp_path / "o", "--model", model),
                      "holds no prompt runs")
    assert_user_error(analyze(trained, model, tmp_path / "o", "--parts", "readings,vibes"),
                      "unknown analysis part(s) vibes")
    runs = trained[1]
    assert_user_error(invoke("analyze", "run", runs, "--out", tmp_path / "o", "--model", model),
                      "task 'capital', which is not built in", "--task FILE")
    assert_user_error(invoke("report", empty, "-o", tmp_path / "r.html"), "neither an analysis folder",
                      "softprompt analyze run")
    # A task run directory is a training curve; its prompt file alone is neither a curve nor a moved prompt.
    assert_user_error(invoke("report", runs / "capital" / "seed-0" / "prompt.safetensors", "-o", tmp_path / "r.html"),
                      "holds a task prompt", "analyze run")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "analysis.json").write_text('{"runs": [\n')
    assert_user_error(invoke("report", broken, "-o", tmp_path / "r.html"), "analysis.json:2", "not valid JSON")
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "o").exists()


def renamed_runs(trained, tmp_path: Path, task: str, folder: str) -> tuple[Path, Path]:
    """The capital runs copied to folders named ``folder``-0 and -1 (their labels) and retold as runs of a task
    named ``task``, with that task's YAML: (runs, tasks)."""
    import shutil

    tasks, runs = trained
    copied, tasks_copy = tmp_path / "runs", tmp_path / "tasks"
    for seed in (0, 1):
        shutil.copytree(runs / "capital" / f"seed-{seed}", copied / f"{folder}-{seed}")
    tasks_copy.mkdir()
    (tasks_copy / "task.yaml").write_text((tasks / "capital.yaml").read_text().replace("name: capital",
                                                                                      f"name: {json.dumps(task)}"))
    shutil.copy(tasks / "capital.jsonl", tasks_copy / "capital.jsonl")
    for metrics in copied.rglob("metrics.json"):
        metrics.write_text(json.dumps(json.loads(metrics.read_text()) | {"task": task}))
    return copied, tasks_copy


def test_report_escapes_every_value_from_run_files(trained, model_dirs, tmp_path: Path) -> None:
    """Run labels (folder names), task names, the title: whatever a run file or the user gives reaches the page
    as text. The page's only script is its own image check."""
    runs, tasks = renamed_runs(trained, tmp_path, "<script>alert('task')</script>", "<img src=x onerror=alert(1)>")
    result = invoke("analyze", "run", runs, "--out", tmp_path / "a", "--model", model_dirs["causal"], "--task",
                    tasks / "task.yaml", "--data-dir", tasks, "--eval-limit", 4, "--probe-size", 2, "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "a" / "analysis.json").read_text())
    doc["similarity"]["probe_size"] = "<script>alert('probe')</script>"  # a hand-edited file, too
    (tmp_path / "a" / "analysis.json").write_text(json.dumps(doc))
    result = invoke("report", tmp_path / "a", "-o", tmp_path / "r.html", "--title", "<b>title</b>")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    assert page.count("<script") == 1 and "<img src=x" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#x27;probe&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;-0" in page and "&lt;script&gt;alert(&#x27;task&#x27;)" in page


def test_a_damaged_analysis_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "analysis.json").write_text(json.dumps({"runs": [{"label": "x"}], "readings": {}}))
    assert_user_error(invoke("report", tmp_path / "a", "-o", tmp_path / "r.html"),
                      "does not have the fields this report reads", "rerun softprompt analyze run")
    assert not (tmp_path / "r.html").exists()


def test_task_names_from_run_files_cannot_write_outside_the_cache(trained, model_dirs, tmp_path: Path) -> None:
    """A run whose metrics.json names its task "x/../../../../escape" keeps every cached unit under OUT/cache."""
    runs, tasks = renamed_runs(trained, tmp_path, "x/../../../../escape", "run")
    out = tmp_path / "deep" / "er" / "out"
    result = invoke("analyze", "run", runs, "--out", out, "--model", model_dirs["causal"], "--task",
                    tasks / "task.yaml", "--data-dir", tasks, "--eval-limit", 4, "--probe-size", 2,
                    "--parts", "faithfulness,transfer", "--quiet")
    assert result.exit_code == 0, result.output
    written = {p.resolve() for p in tmp_path.rglob("*.json")} - {p.resolve() for p in runs.rglob("*.json")}
    assert written and all(p.is_relative_to(out.resolve()) for p in written), sorted(map(str, written))
    assert not list(tmp_path.rglob("escape*"))


def test_undefined_metrics_render_as_a_dash(trained, model_dirs, tmp_path: Path) -> None:
    """A metric the data left undefined (null, e.g. ROC-AUC on one class) is shown as "–", never a crash."""
    assert analyze(trained, model_dirs["causal"], tmp_path / "a", "--parts", "faithfulness,transfer").exit_code == 0
    doc = json.loads((tmp_path / "a" / "analysis.json").read_text())
    doc["runs"][0]["metrics"]["accuracy"] = None
    first = next(iter(doc["faithfulness"]))
    doc["faithfulness"][first]["soft_score"] = None
    source = next(iter(doc["transfer"]["task_scores"]))
    target = doc["transfer"]["targets"][0]
    doc["transfer"]["task_scores"][source][target] = None
    (tmp_path / "a" / "analysis.json").write_text(json.dumps(doc))
    result = invoke("report", tmp_path / "a", "-o", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert "accuracy –" in (tmp_path / "r.html").read_text()
