"""File input and output: atomic writes (a reader never sees a half-written file) and JSONL reading with
line numbers for error messages."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from softprompt.errors import SoftpromptError

# A JSON escape of a UTF-16 surrogate; only a pair of them stands for a character.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only if it succeeded.

    The file is flushed to disk before it replaces ``path`` (so a crash leaves the old file or the new one,
    never an empty one), and a failure to write (a full disk, a read-only directory) is a SoftpromptError
    naming the file, with the temporary file removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise SoftpromptError(f"{path}: cannot write it ({err.strerror or err}); check that its directory is "
                              "writable") from err
    try:
        write(Path(tmp))
        # mkstemp creates the file private (0600), and writers that recreate the file (safetensors) keep
        # that: the result gets the permissions of any new file once it is written.
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        Path(tmp).unlink(missing_ok=True)
        raise SoftpromptError(f"{path}: cannot write it ({getattr(err, 'strerror', None) or err}); check free disk "
                              "space and permissions") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it, which races with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) as None: JSON has no such numbers, and a bare NaN in a
    file makes it unreadable to strict parsers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(finite_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(finite_json(row), ensure_ascii=False, allow_nan=False) + "\n"
                             for row in rows))


def excerpt(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages quote input this way, so that a long or
    multi-line value still gives one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(err: BaseException | str, limit: int = 200) -> str:
    """An exception's message (or a text) on one line, cut to ``limit`` characters: messages from libraries
    (Jinja, YAML, torch) may span lines and quote the input."""
    text = " ".join(str(getattr(err, "message", None) or err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_utf8(path: Path, at_line: str = ", line ") -> str:
    """The text of a UTF-8 file (a BOM is dropped); unreadable or not UTF-8 is a SoftpromptError naming the file
    and, as ``f"{path}{at_line}{n}"``, the first line that is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SoftpromptError(f"{path}: cannot read it ({err.strerror or err}); check its permissions") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SoftpromptError(f"{path}{at_line}{line}: not UTF-8 text; save the file as UTF-8") from err


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a (possibly gzipped) JSONL file with their 1-based line numbers."""
    path = Path(path)
    if not path.is_file():
        raise SoftpromptError(f"{path}: no such file; check the path")
    try:
        with gzip.open(path) if path.name.endswith(".gz") else path.open("rb") as handle:
            raw_lines = handle.readlines()
    except (OSError, EOFError, zlib.error) as exc:  # OSError includes gzip.BadGzipFile; EOFError: truncated
        raise SoftpromptError(f"{path}: cannot read it ({exc}); check that it is a complete file") from exc
    rows = []
    for lineno, raw in enumerate(raw_lines, start=1):
        # Decoding per line (not per file) gives exact line numbers; a BOM can only start line 1.
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise SoftpromptError(f"{path}, line {lineno}: not UTF-8 text; save the file as UTF-8") from exc
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SoftpromptError(
                f"{path}, line {lineno}: malformed JSON ({exc.msg}); each line must be one JSON object"
            ) from exc
        except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, arrays nested too deep
            raise SoftpromptError(
                f"{path}, line {lineno}: JSON too large to read ({type(exc).__name__}); shorten the line"
            ) from exc
        if not isinstance(row, dict):
            raise SoftpromptError(
                f"{path}, line {lineno}: found a JSON {type(row).__name__}; each line must be one JSON object"
            )
        if SURROGATE_ESCAPE.search(line) and not encodable(row):
            # JSON can escape half of a UTF-16 pair ("\ud800"), which no UTF-8 text can hold: tokenizers and
            # writers would fail on it later, far from this line.
            raise SoftpromptError(
                f"{path}, line {lineno}: an unpaired surrogate escape (such as \\ud800) is no character; "
                "fix or remove it"
            )
        rows.append((lineno, row))
    return rows


def encodable(obj: Any) -> bool:
    """Whether ``obj`` (decoded JSON) can be written as UTF-8, i.e. holds no unpaired surrogate."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
