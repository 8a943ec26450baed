"""Atomic writes: all or nothing, with ordinary file permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from softprompt.io import atomic_write, write_text


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
