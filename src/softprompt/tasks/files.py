"""Reading what task files point at, and task files themselves, refusing what is not one.

Data files: JSONL, TSV or CSV with a header row (``read_rows``), or a Hugging Face dataset named
``hf:NAME[#CONFIG][@SPLIT]`` (``read_hf``, for users online). Task files: UTF-8 YAML of at most
``MAX_TASK_BYTES``, loaded by a safe loader without aliases and with bounded nesting (``read_task_text``,
``TaskLoader``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml

from softprompt.errors import SoftpromptError
from softprompt.io import excerpt, read_jsonl, read_utf8

FORMATS = ("jsonl", "tsv", "csv")
HF_PREFIX = "hf:"
# A task file is a few fields: anything larger is a mistake (or an attack on the YAML parser).
MAX_TASK_BYTES = 1_000_000
MAX_YAML_DEPTH = 64
# Delimiters that a CSV or TSV file might use instead of the one its name promises.
DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "bar"}


def read_hf(source: str, split: str) -> list[tuple[int, dict[str, Any]]]:
    """(row number, row) pairs of a Hugging Face dataset named ``hf:NAME[#CONFIG][@SPLIT]``."""
    spec = source.removeprefix(HF_PREFIX)
    spec, _, hf_split = spec.partition("@")
    name, _, config = spec.partition("#")
    try:
        import datasets
    except ImportError as err:
        raise SoftpromptError(f"{source}: reading Hugging Face datasets needs the 'datasets' package "
                              "(pip install datasets), or point the task at a local JSONL/TSV/CSV file") from err
    try:
        rows = datasets.load_dataset(name, config or None, split=hf_split or split)
    except Exception as err:  # the hub raises many kinds (offline, unknown name, unknown split)
        raise SoftpromptError(f"{source}: could not load the dataset ({err})") from err
    return [(i, dict(row)) for i, row in enumerate(rows, start=1)]


def read_rows(path: Path, fmt: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs of a JSONL, TSV or CSV file (TSV/CSV with a header row)."""
    fmt = fmt or {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".csv": "csv"}.get(path.suffix)
    if fmt is None:
        raise SoftpromptError(f"{path}: unknown data format; name it .jsonl, .tsv or .csv, or set 'format' in the task")
    if not path.is_file():
        raise SoftpromptError(f"data file not found: {path}")
    rows = read_jsonl(path) if fmt == "jsonl" else read_table(path, "\t" if fmt == "tsv" else ",")
    if not rows:
        raise SoftpromptError(f"{path}: no examples")
    return rows


def read_table(path: Path, delimiter: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs of a TSV or CSV file with a header row."""
    text = read_utf8(path, at_line=":")
    # QUOTE_NONE: GLUE TSVs contain bare double quotes inside fields.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows = []
    try:
        header = reader.fieldnames or []
        check_header(path, header, delimiter)
        for row in reader:
            if None in row or None in row.values():
                raise SoftpromptError(
                    f"{path}:{reader.line_num}: expected {len(header)} columns {excerpt(header)}; "
                    "fix the row, or quote fields that hold the delimiter"
                )
            rows.append((reader.line_num, dict(row)))
    except csv.Error as err:  # e.g. a field over csv.field_size_limit(), a quote left open
        # The DictReader counts only the lines of the rows it returned; its reader, also the failed one.
        raise SoftpromptError(f"{path}:{reader.reader.line_num}: not a readable table ({err})") from err
    return rows


def check_header(path: Path, header: list[str], delimiter: str) -> None:
    """Refuse a header that shows the file is separated by another delimiter than its name says: otherwise
    every row reads as one column, and the error would be a template's missing field."""
    if not header or header == [""]:
        raise SoftpromptError(f"{path}: the first line must be a header naming the columns (e.g. text,label)")
    if len(header) == 1:
        other = next((d for d in DELIMITERS if d != delimiter and d in header[0]), None)
        if other is not None:
            fix = "name it .tsv or set 'format: tsv' in the task" if other == "\t" else (
                "name it .csv or set 'format: csv' in the task" if other == "," else
                f"save it with {DELIMITERS[delimiter]}s between the fields")
            raise SoftpromptError(
                f"{path}: its header {excerpt(header[0])} looks like it is separated by {other!r}, "
                f"not {delimiter!r}; {fix}"
            )


def read_task_text(path: Path) -> str:
    """The text of a task file, refusing what is not one: a missing file, more than MAX_TASK_BYTES, or
    other text than UTF-8."""
    if not path.is_file():
        raise SoftpromptError(f"task file not found: {path}")
    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_TASK_BYTES else None
    except OSError as err:
        raise SoftpromptError(f"{path}: cannot read it ({err.strerror or err}); check its permissions") from err
    if data is None:
        raise SoftpromptError(f"{path}: a task file of over {MAX_TASK_BYTES // 1000} kB; a task file only says "
                              "where the data is and how to render it, so put the examples in a data file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SoftpromptError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from err


class TaskLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases, and with nesting bounded. A task file has no use for either, and
    aliases let a few lines expand to billions of nodes ("billion laughs"), deep nesting exhausts the stack."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"found the alias *{event.anchor}: aliases are not allowed in a task file; write the "
                "value out", event.start_mark)
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

