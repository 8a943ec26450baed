"""What `softprompt report` reads from transfer work besides analyses: training curves of task runs (transfer as
initialisation against other starts) and prompts moved from another model, read in the target's vocabulary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.analysis.readings import nearest_tokens, prompt_vectors
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts import load_prompt, read_prompt_file

INIT_NAMES = {"text": "description", "vocab": "random tokens", "random": "random vectors"}


@dataclass
class TrainingCurve:
    """One task run's dev loss per epoch (epoch 0: before training) and where its prompt started."""

    label: str
    task: str
    init: str  # "description", "random vectors", "from sst2 (smollm2-135m)", ...
    history: list[dict[str, float]]
    metrics: dict[str, float]
    best_epoch: int


@dataclass
class MovedPrompt:
    """A prompt mapped from another model, with each vector's nearest tokens in the target model's vocabulary."""

    label: str
    model: str  # the target model
    task: str
    how: str  # "projector <sha256>" or "vocabulary bridge"
    source: str  # where it came from: "<task> prompt of <model>"
    tokens: list[list[str]]  # per vector, the nearest tokens by cosine, best first
    scores: list[list[float]]


def is_task_run(path: Path) -> bool:
    """A run directory: metrics.json beside config.json (read_curve then asks for its training history)."""
    return path.is_dir() and (path / "config.json").is_file() and (path / "metrics.json").is_file()


def read_curve(run: Path) -> TrainingCurve:
    """The training curve of a task run directory (written by `task train` or `transfer init`)."""
    path = run / "metrics.json"
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SoftpromptError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); rerun the training") from err
    history = doc.get("history")
    if not isinstance(history, list) or not history or not all("dev_loss" in h for h in history):
        raise SoftpromptError(f"{path}: no training history with dev losses (an evaluation-only run?); give the "
                              "report runs written by softprompt task train or softprompt transfer init")
    sources = doc.get("init_from") or []
    if sources:
        init = "from " + " + ".join(f"{s.get('task') or '?'} ({s.get('model')})" for s in sources)
    else:
        settings = doc.get("settings") or {}
        init = INIT_NAMES.get(settings.get("init"), str(settings.get("init", "?")))
    return TrainingCurve(str(run), str(doc.get("task", "?")), init, history,
                         {k: v for k, v in doc.get("metrics", {}).items() if k != "n"}, int(doc.get("best_epoch", 0)))


def read_moved(path: Path, lm: LanguageModel, k: int = 3) -> MovedPrompt:
    """A moved prompt's nearest tokens in ``lm``'s vocabulary (``lm``: the target model named in its header)."""
    meta = read_prompt_file(path)[0]
    moved = meta["transfer"]
    how = (f"projector {moved['projector_sha256']}" if "projector" in moved else "vocabulary bridge")
    source = moved.get("source") or {}
    near = nearest_tokens(lm, prompt_vectors(load_prompt(path, lm)), k)
    return MovedPrompt(str(path), str(meta["model"]), str(meta.get("task") or "?"), how,
                       f"{source.get('task') or '?'} prompt of {source.get('model') or '?'}", near.tokens(lm),
                       [[round(float(s), 4) for s in row] for row in near.scores.tolist()])
