"""Run directories, written the same way by every kind of run (probe, mixture, task, evaluation, demo).

A run directory holds ``config.json`` (the settings that identify the run, written before any work),
``checkpoint.safetensors`` (while and after training: it is what ``--resume`` continues),
``prompt.safetensors``, ``predictions.jsonl`` and, written last so that its presence marks the run as
finished, ``metrics.json``. Every file is written atomically. One rule decides whether a run may start in
a directory (``RunDir.prepare``), and one check says which settings differ from the stored run's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.io import write_json, write_jsonl
from softprompt.prompts import Prompt

CONFIG = "config.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
PROMPT = "prompt.safetensors"
CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class RunDir:
    """One run's directory; ``command`` is how the user starts such a run (for the hints of errors)."""

    path: Path
    command: str = "softprompt"

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def finished(self) -> bool:
        return (self.path / METRICS).is_file()

    def changed(self, settings: Mapping[str, Any]) -> list[str]:
        """The names of ``settings`` that differ from those of the run stored here (none if there is none)."""
        path = self.path / CONFIG
        if not path.is_file():
            return []
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise SoftpromptError(
                f"{path}: cannot read it ({err}); delete {self.path} or use another directory"
            ) from err
        return [key for key, value in settings.items() if stored.get(key) != value]

    def prepare(self, force: bool = False, resume: bool = False, settings: Mapping[str, Any] | None = None) -> None:
        """Refuse to start where a run already is, unless told to overwrite it (``force``) or to continue it
        (``resume``, which needs the same ``settings`` as the stored run)."""
        if self.path.exists() and not self.path.is_dir():
            raise SoftpromptError(f"--out {self.path} is a file; the run directory must be a directory")
        if not (force or resume):
            if self.finished:
                raise SoftpromptError(f"{self.path} already holds a finished run (metrics.json); pass --force to "
                                      "overwrite it, or choose another --out")
            if self.checkpoint.is_file():
                raise SoftpromptError(f"{self.path} holds an interrupted training run; continue it with "
                                      f"{self.command} --resume, or pass --force to overwrite it")
        if resume and settings is not None and (changed := self.changed(settings)):
            raise SoftpromptError(f"{self.path} was started with other settings ({', '.join(changed)}); resume with "
                                  "the same options, or pass --force instead of --resume to start over")

    def start(self, config: Mapping[str, Any]) -> None:
        """Create the directory and record the run's settings, before any work."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / CONFIG, dict(config))

    def finish(self, metrics: Mapping[str, Any], predictions: Sequence[dict[str, Any]], prompt: Prompt | None = None,
               prompt_extra: dict[str, Any] | None = None) -> None:
        """Write the prompt, the predictions and, last, the metrics."""
        if prompt is not None:
            prompt.save(self.path / PROMPT, extra=prompt_extra)
        write_jsonl(self.path / PREDICTIONS, list(predictions))
        write_json(self.path / METRICS, dict(metrics))

    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / METRICS).read_text(encoding="utf-8"))
