"""Tasks as data: a YAML file says where the examples are, how their fields become text, and what the
answer choices are (in the spirit of lm-evaluation-harness).

A classification task maps each label to a verbalizer (one or more words); a multiple-choice task
renders its choices from the example itself (COPA). Either way an example becomes an input text, a
tuple of choice texts and the index of the gold choice.

    name: cb
    description: Does the premise entail the hypothesis? Answer true, false or neither.
    cluster: nli
    data: {train: superglue/CB/train.jsonl, validation: superglue/CB/val.jsonl}
    template: "{{premise}}\\nQuestion: {{hypothesis}} True, False or Neither?\\nAnswer:"
    target: "{{label}}"
    labels: {entailment: "True", contradiction: "False", neutral: "Neither"}
    metrics: [accuracy, macro_f1]

``cluster`` names the task type (tasks of one type share verbalizers, as ZeroPrompt's §3.4 asks), so that
unseen-task benchmarks can hold out whole types. ``columns: {file column: template name}`` renames columns
that a template cannot name (MRPC's "#1 String").

Templates are Jinja; relative data paths are read from the data directory given, else from
$SOFTPROMPT_SHARED_DATA; ``hf:NAME[#CONFIG][@SPLIT]`` reads a Hugging
Face dataset instead (needs the ``datasets`` package and a connection).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
import yaml

from softprompt.errors import SoftpromptError
from softprompt.io import excerpt, one_line
from softprompt.paths import shared_data_dir
from softprompt.tasks.files import FORMATS, HF_PREFIX, TaskLoader, read_hf, read_rows, read_task_text

METRICS = ("accuracy", "macro_f1", "roc_auc")
SPLITS = ("train", "validation", "test")
# What one template expression may build: a power of at most this many bits, a repeated string or list of
# at most this many items (the sandbox already bounds range() to jinja2.sandbox.MAX_RANGE items).
MAX_POWER_BITS = 4096
MAX_REPEAT = 100_000
# A multiple-choice target: the index of the gold choice (ASCII digits only: int() also reads "²" or "1_0").
INDEX = re.compile(r"-?[0-9]{1,9}")


class _BoundedEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The sandbox, with ``**`` and ``*`` bounded: "{{ 10**10**10 }}" or "{{ 'a' * 10**10 }}" would otherwise
    run for hours or fill the memory (and Jinja would even try them while compiling, to fold constants)."""

    intercepted_binops = frozenset({"**", "*"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0 \
                and right * (abs(left).bit_length() - 1) > MAX_POWER_BITS:
            raise OverflowError(f"a power of more than {MAX_POWER_BITS} bits")
        if operator == "*":
            count, items = (right, left) if _is_int(right) else (left, right)
            if _is_int(count) and isinstance(items, str | list | tuple) and count * len(items) > MAX_REPEAT:
                raise OverflowError(f"a repetition of more than {MAX_REPEAT} items")
        return super().call_binop(context, operator, left, right)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_ENV = _BoundedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


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


_BLANK_ENV = _BoundedEnvironment(undefined=_Blank, keep_trailing_newline=True)


@functools.lru_cache(maxsize=1024)
def _compiled(env: jinja2.Environment, text: str) -> jinja2.Template:
    """``text`` compiled once per environment (``from_string`` compiles anew on every call, and compiling costs
    far more than rendering: it was most of loading SST-2's 67k training rows)."""
    return env.from_string(text)


def _name(key: Any) -> str:
    """A field or label name from a task file as a message shows it: plain if short and printable."""
    return key if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 40 else excerpt(key, 40)


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
    cluster: str | None = None
    columns: dict[str, str] | None = None
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
            for key, value in self.labels.items():
                if not isinstance(value, str):
                    raise SoftpromptError(
                        f"{where}: field 'labels': the verbalizer of label {_name(key)} must be a string, got "
                        f"{type(value).__name__} {excerpt(value, 40)}; write the answer words, e.g. {{yes: \"Yes\"}}"
                    )
            # A target renders as text, so labels match as text: YAML reads {0: no, 1: yes} with integer keys.
            labels = {str(k): v for k, v in self.labels.items()}
            if len(labels) < len(self.labels):
                raise SoftpromptError(f"{where}: field 'labels' has two labels that read the same as text")
            self.labels = labels
            if any(not v.strip() for v in self.labels.values()):
                raise SoftpromptError(f"{where}: field 'labels' has an empty verbalizer")
            if len(set(self.labels.values())) < len(self.labels):
                raise SoftpromptError(f"{where}: field 'labels' gives two labels the same verbalizer")
        if self.choices is not None and not (
            isinstance(self.choices, list) and len(self.choices) >= 2 and all(isinstance(c, str) for c in self.choices)
        ):
            raise SoftpromptError(f"{where}: field 'choices' must be a list of at least two templates")
        if not isinstance(self.data, dict) or set(self.data) - set(SPLITS) or not all(
            isinstance(v, str) and v for v in self.data.values()
        ):
            raise SoftpromptError(f"{where}: field 'data' must map splits ({', '.join(SPLITS)}) to files")
        if self.cluster is not None and (not isinstance(self.cluster, str) or not self.cluster.strip()):
            raise SoftpromptError(f"{where}: field 'cluster' must be a non-empty string naming the task type, "
                                  "e.g. sentiment")
        if self.columns is not None:
            self._check_columns()
        if self.format is not None and self.format not in FORMATS:
            raise SoftpromptError(
                f"{where}: field 'format' must be one of {', '.join(FORMATS)}, got {excerpt(self.format)}"
            )
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise SoftpromptError(f"{where}: field 'metrics' has unknown {excerpt(bad)}; known: {', '.join(METRICS)}")
        if "roc_auc" in self.metrics and self.num_choices != 2:
            raise SoftpromptError(f"{where}: metric roc_auc needs exactly two choices")
        for name in ("template", "target", *(["choices"] if self.choices else [])):
            for text in self.choices if name == "choices" else [getattr(self, name)]:
                try:
                    _compiled(_ENV, text)
                except jinja2.TemplateSyntaxError as err:
                    raise SoftpromptError(
                        f"{where}: field '{name}' is not a valid template (its line {err.lineno}: {one_line(err)})"
                    ) from err
                except (RecursionError, MemoryError) as err:  # expressions nested too deep to compile
                    raise SoftpromptError(
                        f"{where}: field '{name}' is not a valid template (nested too deeply); simplify it"
                    ) from err

    def _check_columns(self) -> None:
        """File column -> template name: the names must be usable in a template, and distinct, or one column
        would hide another."""
        where, columns = self.source, self.columns
        if not isinstance(columns, dict):
            raise SoftpromptError(f"{where}: field 'columns' must map file columns to template names, e.g. "
                                  "{\"#1 String\": sentence1}")
        for key, value in columns.items():
            if not isinstance(key, str) or not key:
                raise SoftpromptError(f"{where}: field 'columns': column {excerpt(key, 40)} must be a non-empty "
                                      "string; write the column's name as the file's header has it, in quotes")
            if not isinstance(value, str) or not value.isidentifier():
                raise SoftpromptError(
                    f"{where}: field 'columns': the name {excerpt(value, 40)} given to column {excerpt(key, 40)} "
                    "cannot be used in a template; use letters, digits and _ (not first), e.g. sentence1"
                )
        names = list(columns.values())
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise SoftpromptError(f"{where}: field 'columns' renames two columns to {excerpt(twice, 40)}; give each "
                                  "column its own name")

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
        row = self.rename(row, where)
        text = self._render("template", self.template, row, where)
        target = self._render("target", self.target, row, where).strip() if labelled else "-1"
        if self.labels is not None:
            choices = tuple(self.labels.values())
            keys = list(self.labels)
            label = keys.index(target) if target in keys else (-1 if not labelled else None)
        else:
            choices = tuple(self._render("choices", c, row, where).strip() for c in self.choices or [])
            label = int(target) if INDEX.fullmatch(target) else None
        if label is None or not -1 <= label < len(choices):
            known = list(self.labels) if self.labels is not None else list(range(len(choices)))
            raise SoftpromptError(
                f"{where}: target {excerpt(target)} is not one of {excerpt(known)}; fix the row or the task's "
                f"'target'/'labels' in {self.source}"
            )
        return TaskExample(text, choices, label, row)

    def rename(self, row: Mapping[str, Any], where: str = "") -> Mapping[str, Any]:
        """``row`` with its columns renamed as ``columns`` says (the fields a template sees)."""
        if not self.columns:
            return row
        renamed = {self.columns.get(k, k): v for k, v in row.items()}
        if len(renamed) < len(row):
            clash = next(k for k in row if k not in self.columns and k in self.columns.values())
            raise SoftpromptError(
                f"{where}: the row has a column {excerpt(clash, 40)} and 'columns' renames another column to it; "
                f"choose another name in 'columns' of {self.source}"
            )
        return renamed

    def _render(self, field: str, text: str, row: Mapping[str, Any], where: str,
                env: jinja2.Environment = _ENV) -> str:
        """One template of field ``field`` rendered over ``row``; a failure is a SoftpromptError naming both."""
        try:
            return _compiled(env, text).render(row)
        except jinja2.UndefinedError as err:
            raise SoftpromptError(
                f"{where}: {one_line(err)} (task {self.name!r}, field '{field}' in {self.source})"
            ) from err
        except (OverflowError, MemoryError, RecursionError) as err:
            raise SoftpromptError(
                f"{where}: field '{field}' of task {self.name!r} computes too much ({one_line(err)}); simplify it "
                f"in {self.source}"
            ) from err
        except Exception as err:  # the template's own expressions over the row's values (e.g. "a" + 1, 1 / 0)
            raise SoftpromptError(
                f"{where}: template error for task {self.name!r}, field '{field}' in {self.source}: "
                f"{type(err).__name__}: {one_line(err)}"
            ) from err

    def content_free(self) -> TaskExample:
        """The template with every field "N/A" (Zhao et al. 2021's calibration input)."""
        if self.labels is None:
            raise SoftpromptError(f"task {self.name!r}: contextual calibration needs a shared label set ('labels')")
        where = f"the content-free input of task {self.name!r}"
        text = self._render("template", self.template, {}, where, _BLANK_ENV)
        return TaskExample(text, tuple(self.labels.values()), -1)

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
                    "set SOFTPROMPT_SHARED_DATA, give the data directory (data_dir; --data-dir), or give the split's "
                    "file (path; --train/--eval)"
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
        doc = {k: getattr(self, k) for k in ("name", "description", "cluster", "data", "format", "columns", "template",
                                            "target", "labels", "choices", "target_delimiter", "metrics")}
        return yaml.safe_dump({k: v for k, v in doc.items() if v is not None}, sort_keys=False, allow_unicode=True)


def task_from_dict(doc: Mapping[str, Any], source: str) -> Task:
    if not isinstance(doc, Mapping):
        raise SoftpromptError(f"{source}: a task file must be a YAML mapping of fields")
    known = {f for f in Task.__dataclass_fields__ if f != "source"}
    unknown = sorted(_name(key) for key in set(doc) - known)
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


def tasks_by_cluster() -> dict[str, list[str]]:
    """The built-in tasks grouped by task type, so that a benchmark can hold out tasks of every type (a task
    without a cluster is a type of its own)."""
    clusters: dict[str, list[str]] = {}
    for name in builtin_tasks():
        clusters.setdefault(load_task(name).cluster or name, []).append(name)
    return dict(sorted(clusters.items()))


def load_task(spec: str | Path) -> Task:
    """A built-in task by name (``cb``) or a task YAML file by path."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        text, source = read_task_text(path), str(path)
    elif str(spec) in builtin_tasks():
        res = resources.files("softprompt.tasks.builtin") / f"{spec}.yaml"
        text, source = res.read_text(encoding="utf-8"), f"built-in task {spec}"
    else:
        raise SoftpromptError(
            f"unknown task {str(spec)!r}: not a task YAML file, and not a built-in task ({', '.join(builtin_tasks())})"
        )
    try:
        doc = yaml.load(text, Loader=TaskLoader)  # a SafeLoader: it builds only plain data
    except yaml.reader.ReaderError as err:  # a control character
        line = text[: err.position].count("\n") + 1
        raise SoftpromptError(f"{source}:{line}: not valid YAML (character #x{err.character:04x} is not "
                              f"allowed: {err.reason})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SoftpromptError(f"{source}{line}: not valid YAML ({one_line(getattr(err, 'problem', None) or err)})") \
            from err
    except Exception as err:  # PyYAML's constructors: ValueError for 2024-13-01, IndexError for "!!int" alone, ...
        raise SoftpromptError(f"{source}: not valid YAML ({one_line(err)})") from err
    return task_from_dict(doc, source)
