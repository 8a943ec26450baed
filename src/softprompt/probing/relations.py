"""LAMA-style knowledge-probing data: facts (subject, answer) and cloze templates with [X] and [Y]."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.io import excerpt, read_jsonl, read_utf8

SPLITS = ("train", "dev", "test")
# A split directory may carry its own template, so that it can be used without a templates file.
TEMPLATE_FILE = "template.txt"
# The ten T-REx relations used for the main experiments.
TREX10 = ("P36", "P37", "P103", "P19", "P1412", "P17", "P30", "P101", "P138", "P407")
# The two row formats: Qin & Eisner split files, then original LAMA / LPAQA / ParaRel files.
_FACT_KEYS = (("sub", "obj"), ("sub_label", "obj_label"))


@dataclass(frozen=True)
class Fact:
    """One fact: ``subject`` fills [X] and ``answer`` is the [Y] to predict."""

    subject: str
    answer: str


@dataclass
class Relation:
    """A relation's template and its facts per split ("train", "dev", "test"; missing splits become empty)."""

    name: str
    template: str
    splits: dict[str, list[Fact]]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Relation.name must be a non-empty string, got {self.name!r}")
        check_template(self.template, f"the template of relation {self.name!r}")
        if not isinstance(self.splits, dict):
            raise TypeError(f"Relation {self.name!r}: splits must be a dict of split name to facts")
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"Relation {self.name!r}: unknown splits {sorted(unknown)}; use {list(SPLITS)}")
        for split, facts in self.splits.items():
            if not all(isinstance(fact, Fact) for fact in facts):
                raise TypeError(f"Relation {self.name!r}: split {split!r} must be a list of Fact")
        # Every split key is present so that callers can index without guarding for eval-only data.
        self.splits = {split: list(self.splits.get(split, [])) for split in SPLITS}


def check_template(template: Any, where: str) -> None:
    """Raise a SoftpromptError unless ``template`` is a string holding both [X] and [Y]."""
    if not isinstance(template, str):
        raise SoftpromptError(
            f"{where} must be a string, got {type(template).__name__} {excerpt(template)}; "
            "write it like '[X] was born in [Y] .'"
        )
    missing = [slot for slot in ("[X]", "[Y]") if slot not in template]
    if missing:
        raise SoftpromptError(
            f"{where} {excerpt(template)} lacks {' and '.join(missing)}; write it with [X] for the subject "
            "and [Y] for the answer, e.g. '[X] was born in [Y] .'"
        )


def _stem(path: Path) -> str:
    """``P19.jsonl.gz`` -> ``P19``; a directory keeps its name."""
    return path.name.removesuffix(".gz").removesuffix(".jsonl")


def read_facts(path: str | Path) -> list[Fact]:
    """Facts of a JSONL file with ``{"sub", "obj"}`` or ``{"sub_label", "obj_label"}`` rows (``.gz`` too)."""
    facts = []
    for lineno, row in read_jsonl(path):
        # Labels first: Google-RE rows hold Freebase ids under "sub"/"obj" and the names under "*_label".
        keys = next((pair for pair in reversed(_FACT_KEYS) if all(key in row for key in pair)), None)
        if keys is None:
            expected = " or ".join(f'"{sub}" and "{obj}"' for sub, obj in _FACT_KEYS)
            raise SoftpromptError(
                f"{path}, line {lineno}: a fact needs the keys {expected}; found {excerpt(sorted(row))}"
            )
        values = [row[key] for key in keys]
        for key, value in zip(keys, values, strict=True):
            if not isinstance(value, str) or not value.strip():
                raise SoftpromptError(
                    f'{path}, line {lineno}: "{key}" must be a non-empty string, got {excerpt(value)}'
                )
        facts.append(Fact(*values))
    if not facts:
        raise SoftpromptError(
            f'no facts in {path}; add one JSON object per line, e.g. {{"sub": "Paris", "obj": "France"}}'
        )
    return facts


def read_templates(path: str | Path) -> dict[str, str]:
    """Templates by relation from LAMA ``relations.jsonl``, or a one-relation file keyed by its stem."""
    templates: dict[str, str] = {}
    for lineno, row in read_jsonl(path):
        if "template" not in row:
            raise SoftpromptError(
                f'{path}, line {lineno}: no "template" key; found {excerpt(sorted(row))}; '
                'write lines like {"relation": "P19", "template": "[X] was born in [Y] ."}'
            )
        relation = row.get("relation", _stem(Path(path)))
        if not isinstance(relation, str):
            raise SoftpromptError(
                f'{path}, line {lineno}: "relation" must be a string, got {excerpt(relation)}; name it like "P19"'
            )
        check_template(row["template"], f"{path}, line {lineno}: the template")
        # Single-prompt files may list several prompts; the first is the manual one.
        templates.setdefault(relation, row["template"])
    if not templates:
        raise SoftpromptError(
            f'no templates in {path}; add lines like {{"template": "[X] was born in [Y] ."}}'
        )
    return templates


def load_split_dir(directory: str | Path) -> dict[str, list[Fact]]:
    """The facts of ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` in ``directory`` (each optional)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SoftpromptError(f"{directory}: no such directory; check the path")
    names = [f"{split}.jsonl" for split in SPLITS]
    splits = {
        split: read_facts(directory / name)
        for split, name in zip(SPLITS, names, strict=True)
        if (directory / name).is_file()
    }
    if not splits:
        raise SoftpromptError(
            f"{directory}: found none of {', '.join(names)}; put at least one split file there"
        )
    return splits


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a BOM is dropped), split at line feeds only, so that line numbers in
    messages are an editor's (str.splitlines also splits at form feeds and Unicode line separators)."""
    return [line.removesuffix("\r") for line in read_utf8(path).split("\n")]


def _read_template_txt(path: Path) -> str:
    """The first non-blank line of a plain-text template file."""
    lines = [line.strip() for line in read_text_lines(path) if line.strip()]
    template = lines[0] if lines else ""
    check_template(template, f"{path}: the template")
    return template


def load_relation(
    data: str | Path,
    template: str | None = None,
    templates_file: str | Path | None = None,
    name: str | None = None,
) -> Relation:
    """A relation from a split directory or a single JSONL file (taken as the test split).

    The template is ``template`` if given, else the entry ``name`` (default: the data's stem, e.g. "P19")
    of ``templates_file``, else the directory's ``template.txt``.
    """
    data = Path(data)
    if data.is_dir():
        splits = load_split_dir(data)
    elif data.is_file():
        splits = {"test": read_facts(data)}
    else:
        raise SoftpromptError(f"{data}: no such file or directory; check the path")
    # "." or "x/.jsonl" have no stem of their own: name them after the directory they are, or a generic name.
    name = name or _stem(data) or _stem(data.resolve()) or "relation"
    if template is None and templates_file is not None:
        templates = read_templates(templates_file)
        if name not in templates:
            shown = ", ".join(list(templates)[:10]) + (", ..." if len(templates) > 10 else "")
            raise SoftpromptError(
                f"{templates_file} has no template for relation {name!r} (it has {shown}); "
                "pass the relation name that matches your data, or give the template directly"
            )
        template = templates[name]
    elif template is None and data.is_dir() and (data / TEMPLATE_FILE).is_file():
        template = _read_template_txt(data / TEMPLATE_FILE)
    if template is None:
        raise SoftpromptError(
            f"no template for {data}: pass a template such as '[X] was born in [Y] .' or a templates file "
            f"such as LAMA's relations.jsonl (or, for a split directory, write it into {TEMPLATE_FILE} there)"
        )
    return Relation(name=name, template=template, splits=splits)
