"""Tasks as data: a YAML file says where the examples are, how their fields become text, and what the
answer choices are (in the spirit of lm-evaluation-harness).

A classification task maps each label to a verbalizer (one or more words); a multiple-choice task
renders its choices from the example itself (COPA). Either way an example becomes an input text, a
tuple of choice texts and the index of the gold choice.

    name: cb
    description: Does the premise entail the hypothesis? Answer true, false or neither.
    data: {train: superglue/CB/train.jsonl, validation: superglue/CB/val.jsonl}
    template: "{{premise}}\\nQuestion: {{hypothesis}} True, False or Neither?\\nAnswer:"
    target: "{{label}}"
    labels: {entailment: "True", contradiction: "False", neutral: "Neither"}
    metrics: [accuracy, macro_f1]

Templates are Jinja; relative data paths are read from the data directory given, else from
$SOFTPROMPT_SHARED_DATA; ``hf:NAME[#CONFIG][@SPLIT]`` reads a Hugging
Face dataset instead (needs the ``datasets`` package and a connection).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
import yaml

from softprompt.errors import SoftpromptError
from softprompt.io import read_jsonl
from softprompt.paths import shared_data_dir

METRICS = ("accuracy", "macro_f1", "roc_auc")
SPLITS = ("train", "validation", "test")
FORMATS = ("jsonl", "tsv", "csv")
HF_PREFIX = "hf:"
_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


class _Blank(jinja2.Undefined):
    """Renders every missing field as "N/A": the content-free input of contextual calibration."""

    def __str__(self) -> str:
        return "N/A"

    def __getattr__(self, name: str) -> _Blank:
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __getitem__(self, key: object) -> _Blank:
        return self


_BLANK_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=_Blank, keep_trailing_newline=True)


@dataclass(frozen=True)
class TaskExample:
    text: str
    choices: tuple[str, ...]
    label: int  # index into choices, -1 when unlabelled
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class Task:
    """One task definition; ``source`` is the YAML file it came from (used in error messages)."""

    name: str
    template: str
    target: str = "{{label}}"
    labels: dict[str, str] | None = None
    choices: list[str] | None = None
    description: str = ""
    data: dict[str, str] = field(default_factory=dict)
    format: str | None = None
    target_delimiter: str = " "
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    source: str = "<task>"

    def __post_init__(self) -> None:
        where = self.source
        if not isinstance(self.name, str) or not self.name:
            raise SoftpromptError(f"{where}: field 'name' must be a non-empty string")
        if (self.labels is None) == (self.choices is None):
            raise SoftpromptError(
                f"{where}: give exactly one of 'labels' (label -> verbalizer, for classification) or "
                "'choices' (a list of templates, for multiple choice)"
            )
        if self.labels is not None:
            if not isinstance(self.labels, dict) or len(self.labels) < 2:
                raise SoftpromptError(f"{where}: field 'labels' must map at least two labels to verbalizers")
            self.labels = {str(k): str(v) for k, v in self.labels.items()}
            if any(not v.strip() for v in self.labels.values()):
                raise SoftpromptError(f"{where}: field 'labels' has an empty verbalizer")
            if len(set(self.labels.values())) < len(self.labels):
                raise SoftpromptError(f"{where}: field 'labels' gives two labels the same verbalizer")
        if self.choices is not None and not (
            isinstance(self.choices, list) and len(self.choices) >= 2 and all(isinstance(c, str) for c in self.choices)
        ):
            raise SoftpromptError(f"{where}: field 'choices' must be a list of at least two templates")
        if not isinstance(self.data, dict) or set(self.data) - set(SPLITS):
            raise SoftpromptError(f"{where}: field 'data' must map splits ({', '.join(SPLITS)}) to files")
        if self.format is not None and self.format not in FORMATS:
            raise SoftpromptError(f"{where}: field 'format' must be one of {', '.join(FORMATS)}, got {self.format!r}")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise SoftpromptError(f"{where}: field 'metrics' has unknown {bad}; known: {', '.join(METRICS)}")
        if "roc_auc" in self.metrics and self.num_choices != 2:
            raise SoftpromptError(f"{where}: metric roc_auc needs exactly two choices")
        for name in ("template", "target", *(["choices"] if self.choices else [])):
            for text in self.choices if name == "choices" else [getattr(self, name)]:
                try:
                    _ENV.from_string(text)
                except jinja2.TemplateSyntaxError as err:
                    raise SoftpromptError(f"{where}: field '{name}' is not a valid template: {err}") from err

    @property
    def num_choices(self) -> int:
        return len(self.labels) if self.labels is not None else len(self.choices or [])

    @property
    def verbalizers(self) -> list[str] | None:
        """The shared answer words of a classification task (None for multiple choice)."""
        return list(self.labels.values()) if self.labels is not None else None

    def render(self, row: Mapping[str, Any], where: str = "", labelled: bool = True) -> TaskExample:
        """One data row as an example; ``where`` (file:line) goes into error messages. Unlabelled rows
        (``labelled=False``, for prediction) get label -1."""
        try:
            text = _ENV.from_string(self.template).render(row)
            target = _ENV.from_string(self.target).render(row).strip() if labelled else "-1"
            if self.labels is not None:
                choices = tuple(self.labels.values())
                keys = list(self.labels)
                label = keys.index(target) if target in keys else (-1 if not labelled else None)
            else:
                choices = tuple(_ENV.from_string(c).render(row).strip() for c in self.choices or [])
                label = int(target) if target.lstrip("-").isdigit() else None
        except jinja2.UndefinedError as err:
            raise SoftpromptError(f"{where}: {err} (task {self.name!r}, defined in {self.source})") from err
        except jinja2.TemplateError as err:
            raise SoftpromptError(f"{where}: template error for task {self.name!r}: {err}") from err
        if label is None or not -1 <= label < len(choices):
            known = list(self.labels) if self.labels is not None else list(range(len(choices)))
            raise SoftpromptError(
                f"{where}: target {target!r} is not one of {known}; fix the row or the task's 'target'/'labels' "
                f"in {self.source}"
            )
        return TaskExample(text, choices, label, row)

    def content_free(self) -> TaskExample:
        """The template with every field "N/A" (Zhao et al. 2021's calibration input)."""
        if self.labels is None:
            raise SoftpromptError(f"task {self.name!r}: contextual calibration needs a shared label set ('labels')")
        return TaskExample(_BLANK_ENV.from_string(self.template).render(), tuple(self.labels.values()), -1)

    def path(self, split: str, data_dir: str | Path | None = None) -> Path:
        if split not in self.data:
            raise SoftpromptError(
                f"task {self.name!r} has no {split!r} split in {self.source}; splits: {', '.join(self.data) or 'none'}"
            )
        path = Path(self.data[split]).expanduser()
        if path.is_absolute():
            return path
        if data_dir is None:
            data_dir = shared_data_dir()
            if data_dir is None:
                raise SoftpromptError(
                    f"task {self.name!r}: {path} is relative to the staged data directory, which was not found; "
                    "set SOFTPROMPT_SHARED_DATA, pass --data-dir, or give the split's file with --train/--eval"
                )
        return Path(data_dir) / path

    def load(self, split: str, data_dir: str | Path | None = None, path: str | Path | None = None,
             labelled: bool = True) -> list[TaskExample]:
        """The examples of one split, from the task's file, from ``path``, or from a Hugging Face dataset
        (``hf:NAME[#CONFIG][@SPLIT]``, for users online; the split defaults to this one's name)."""
        if path is None and str(self.data.get(split, "")).startswith(HF_PREFIX):
            source = self.data[split]
            return [self.render(row, f"{source} row {i}", labelled) for i, row in read_hf(source, split)]
        path = Path(path) if path is not None else self.path(split, data_dir)
        return [self.render(row, f"{path}:{line}", labelled) for line, row in read_rows(path, self.format)]

    def to_yaml(self) -> str:
        doc = {k: getattr(self, k) for k in ("name", "description", "data", "format", "template", "target", "labels",
                                            "choices", "target_delimiter", "metrics")}
        return yaml.safe_dump({k: v for k, v in doc.items() if v is not None}, sort_keys=False, allow_unicode=True)


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
    if fmt == "jsonl":
        rows = read_jsonl(path)
    else:
        rows = []
        with path.open(encoding="utf-8-sig", newline="") as f:
            # QUOTE_NONE: GLUE TSVs contain bare double quotes inside fields.
            quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
            reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",", quoting=quoting)
            for row in reader:
                if None in row or None in row.values():
                    raise SoftpromptError(
                        f"{path}:{reader.line_num}: expected {len(reader.fieldnames or [])} columns "
                        f"({', '.join(reader.fieldnames or [])})"
                    )
                rows.append((reader.line_num, dict(row)))
    if not rows:
        raise SoftpromptError(f"{path}: no examples")
    return rows


def task_from_dict(doc: Mapping[str, Any], source: str) -> Task:
    if not isinstance(doc, Mapping):
        raise SoftpromptError(f"{source}: a task file must be a YAML mapping of fields")
    known = {f for f in Task.__dataclass_fields__ if f != "source"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise SoftpromptError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for required in ("name", "template"):
        if required not in doc:
            raise SoftpromptError(f"{source}: missing required field '{required}'")
    for name, kind in (("template", str), ("target", str), ("description", str), ("target_delimiter", str),
                       ("metrics", list), ("data", dict)):
        if name in doc and not isinstance(doc[name], kind):
            raise SoftpromptError(f"{source}: field '{name}' must be a {kind.__name__}, got {type(doc[name]).__name__}")
    return Task(**doc, source=source)


def builtin_tasks() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("softprompt.tasks.builtin").iterdir()
                  if p.name.endswith(".yaml"))


def load_task(spec: str | Path) -> Task:
    """A built-in task by name (``cb``) or a task YAML file by path."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SoftpromptError(f"task file not found: {path}")
        text, source = path.read_text(encoding="utf-8"), str(path)
    elif str(spec) in builtin_tasks():
        res = resources.files("softprompt.tasks.builtin") / f"{spec}.yaml"
        text, source = res.read_text(encoding="utf-8"), f"built-in task {spec}"
    else:
        raise SoftpromptError(
            f"unknown task {str(spec)!r}: not a task YAML file, and not a built-in task ({', '.join(builtin_tasks())})"
        )
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SoftpromptError(f"{source}{line}: not valid YAML ({getattr(err, 'problem', err)})") from err
    return task_from_dict(doc, source)

