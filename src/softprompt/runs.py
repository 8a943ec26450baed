"""Run directories, written the same way by every kind of run (probe, mixture, task, evaluation, demo).

A run directory holds ``config.json`` (the settings that identify the run and the precision it computes in,
written before any work), ``checkpoint.safetensors`` (while and after training: it is what ``--resume`` continues),
``prompt.safetensors``, ``predictions.jsonl``, ``dropped.jsonl`` (facts a probing run could not use, and
why), ``lineage.jsonl`` (every prompt a genetic search scored, and where it came from) and, written last
so that its presence marks the run as finished, ``metrics.json`` (with the run's ``warnings``). Every file
is written atomically. One rule decides whether a run may start in a directory
(``RunDir.prepare``), and one check says which settings differ from the stored run's.

A run holds the directory's lock (``.lock``, an advisory ``flock`` that the system releases when the process
ends, so a crash leaves no stale lock) from before it touches anything until it is done: a second run into
the same directory stops with one line instead of mixing its files with the first's. A new run first
removes what an earlier one left, ``metrics.json`` first, so that a kill at any moment leaves either part of
the old run (never marked finished) or nothing of it; config.json and metrics.json carry one ``run_id``,
and a reader refuses a directory whose two files disagree.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt import distributed
from softprompt.errors import SoftpromptError
from softprompt.io import write_json, write_jsonl
from softprompt.prompts import Prompt

CONFIG = "config.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
DROPPED = "dropped.jsonl"
LINEAGE = "lineage.jsonl"
PROMPT = "prompt.safetensors"
CHECKPOINT = "checkpoint.safetensors"
WARMUP = "warmup.safetensors"
LOCK = ".lock"
# What a run leaves, in the order a new run removes it: the finished marker first, the identity last.
RUN_FILES = (METRICS, PREDICTIONS, PROMPT, CHECKPOINT, WARMUP, DROPPED, LINEAGE, CONFIG)

log = logging.getLogger(__name__)


def warn(warnings: list[str], message: str) -> None:
    """Show ``message`` now, through logging (the command line prints warnings even with --quiet), and keep it
    in ``warnings``, which a run writes to metrics.json: a warning seen only on the terminal is lost to audits."""
    log.warning("warning: %s", message)
    warnings.append(message)


@dataclass(frozen=True)
class RunDir:
    """One run's directory; ``command`` is how the user starts such a run (for the hints of errors)."""

    path: Path
    command: str = "softprompt"
    run_id: list[str] = field(default_factory=list, compare=False)  # set by open(): one id per run

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def finished(self) -> bool:
        return (self.path / METRICS).is_file()

    def changed(self, settings: Mapping[str, Any]) -> list[str]:
        """The names of ``settings`` that differ from those of the run stored here (none if there is none)."""
        if not (self.path / CONFIG).is_file():
            return []
        stored = self._json(CONFIG)
        changed = [key for key, value in settings.items() if stored.get(key) != value]
        if stored.get("precision", "fp32") != distributed.active_precision():  # runs before it was recorded: fp32
            changed.append("precision")
        return changed

    def prepare(self, force: bool = False, resume: bool = False, settings: Mapping[str, Any] | None = None) -> None:
        """Refuse to start where a run already is, unless told to overwrite it (``force``) or to continue it
        (``resume``, which needs the same ``settings`` as the stored run)."""
        if self.path.exists() and not self.path.is_dir():
            raise SoftpromptError(f"--out {self.path} is a file; the run directory must be a directory")
        if (self.path / LOCK).is_file():
            with self.lock():  # fail now, before any work, if another run holds the directory
                pass
        if not (force or resume):
            if self.finished:
                raise SoftpromptError(f"{self.path} already holds a finished run (metrics.json); pass --force to "
                                      "overwrite it, or choose another --out")
            if self.checkpoint.is_file():
                raise SoftpromptError(f"{self.path} holds an interrupted training run; continue it with "
                                      f"{self.command} --resume, or pass --force to overwrite it")
        if resume and (changed := self.changed(settings or {})):
            raise SoftpromptError(f"{self.path} was started with other settings ({', '.join(changed)}); resume with "
                                  "the same options, or pass --force instead of --resume to start over")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's lock, or stop at once if another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise SoftpromptError(f"{self.path} is in use by another run (process {holder}); wait for it to "
                                      "finish, or choose another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextmanager
    def open(self, config: Mapping[str, Any], resume: bool = False) -> Iterator[RunDir]:
        """Lock the directory, clear what an earlier run left (unless ``resume``: then keep it and its
        run_id) and record this run's settings; the body does the work and calls ``finish``. A run that
        fails before its first checkpoint leaves nothing behind (not even the directory, if it made it)."""
        created = not self.path.exists()
        with self.lock():  # a run that cannot have the lock touches nothing
            try:
                stored = self._json(CONFIG) if resume and (self.path / CONFIG).is_file() else {}
                for left in self.path.glob(".*.tmp"):  # a killed writer's: never part of a run
                    left.unlink(missing_ok=True)
                if not resume:
                    self.clear()
                self.run_id[:] = [stored.get("run_id") or uuid.uuid4().hex]
                write_json(self.path / CONFIG, dict(config) | {"precision": distributed.active_precision(),
                                                               "run_id": self.run_id[0]})
                yield self
            except BaseException:
                resumable = self.finished or self.checkpoint.is_file() or (self.path / WARMUP).is_file()
                if not (resume or resumable):  # a resumed run's config.json was there before it
                    for name in (DROPPED, CONFIG):
                        (self.path / name).unlink(missing_ok=True)
                    if created:
                        (self.path / LOCK).unlink(missing_ok=True)
                        with contextlib.suppress(OSError):
                            self.path.rmdir()
                raise

    def clear(self) -> None:
        """Remove an earlier run's files (the finished marker first) and damaged checkpoints set aside."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for left in self.path.glob("*.damaged"):
            left.unlink(missing_ok=True)

    def write_rows(self, name: str, rows: Sequence[dict[str, Any]]) -> None:
        """Write one of the run's JSONL files besides the predictions (``DROPPED``, ``LINEAGE``), within ``open``."""
        write_jsonl(self.path / name, list(rows))

    def finish(self, metrics: Mapping[str, Any], predictions: Sequence[dict[str, Any]], prompt: Prompt | None = None,
               prompt_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the prompt, the predictions and, last, the metrics (within ``open``); return the metrics as
        written."""
        if prompt is not None:
            prompt.save(self.path / PROMPT, extra=prompt_extra)
        write_jsonl(self.path / PREDICTIONS, list(predictions))
        doc = dict(metrics) | {"run_id": self.run_id[0]}
        write_json(self.path / METRICS, doc)
        return doc

    def _json(self, name: str) -> dict[str, Any]:
        path = self.path / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SoftpromptError(f"{path}: cannot read it ({err}); rerun with --force, or use another "
                                  "directory") from err

    def check_complete(self) -> None:
        """Refuse a directory holding a run that did not finish, or files of two runs (for readers that use
        the run's other files, e.g. its predictions); a directory without config.json is no run of ours."""
        if not (self.path / CONFIG).is_file():
            return
        if not self.finished:
            raise SoftpromptError(f"{self.path} holds a run that did not finish (no metrics.json); finish it with "
                                  "--resume, or rerun it")
        self.metrics()

    def metrics(self) -> dict[str, Any]:
        """The finished run's metrics, refused when config.json belongs to another run (an interrupted
        overwrite by a version that did not clear first)."""
        metrics, config = self._json(METRICS), self._json(CONFIG) if (self.path / CONFIG).is_file() else {}
        if metrics.get("run_id") != config.get("run_id"):
            raise SoftpromptError(f"{self.path}: metrics.json and config.json belong to different runs; rerun it "
                                  "with --force")
        return metrics
