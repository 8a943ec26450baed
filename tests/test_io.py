"""Atomic writes: all or nothing, with ordinary file permissions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write, write_json, write_jsonl, write_text


def test_atomic_write_keeps_the_old_file_on_failure_and_uses_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_text(target, "old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    previous = os.umask(0o022)
    try:
        write_text(tmp_path / "new.txt", "x")
        atomic_write(tmp_path / "new.safetensors", lambda tmp: save_file({"x": torch.zeros(1)}, str(tmp)))
    finally:
        os.umask(previous)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "new.safetensors").stat().st_mode & 0o777 == 0o644


def test_atomic_write_reads_the_umask_without_changing_it_and_names_the_file_on_failure(tmp_path, monkeypatch):
    """The umask is read, never set (setting it races with other threads); an OSError while writing (a full
    disk) is one SoftpromptError naming the file, with the temporary file gone."""
    previous = os.umask(0o027)
    try:
        calls = []
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0o027)
        write_text(tmp_path / "private.txt", "x")
        assert calls == [] and (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o640
    finally:
        monkeypatch.undo()
        os.umask(previous)

    def full(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(SoftpromptError, match=r"out\.txt: cannot write it \(No space left on device\); check free disk "
                                              "space"):
        atomic_write(tmp_path / "out.txt", full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.txt"]


def test_strict_json_for_non_finite_numbers(tmp_path):
    write_json(tmp_path / "m.json", {"p": float("nan"), "rows": [float("inf"), 1.5]})
    write_jsonl(tmp_path / "p.jsonl", [{"lp": float("-inf")}])
    strict = {"parse_constant": lambda c: pytest.fail(f"bare {c}")}
    assert json.loads((tmp_path / "m.json").read_text(), **strict) == {"p": None, "rows": [None, 1.5]}
    assert json.loads((tmp_path / "p.jsonl").read_text(), **strict) == {"lp": None}
