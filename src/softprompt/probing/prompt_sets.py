"""Sets of templates per relation, the initialisations of a mixture (Qin & Eisner §4.4).

Sources, by short name as in the paper's tables:

* ``sin``: the single manual LAMA template;
* ``par``: LPAQA paraphrases of it;
* ``min``: LPAQA prompts mined from Wikipedia;
* ``ran``: the mined prompts with every word replaced by a random vector (same lengths and blanks);
* ``pararel``: ParaRel's paraphrased patterns (an extra source, T-REx only);
* ``omcs``: ConceptNet's templates from the Open Mind Common Sense sentences.

Files are JSONL with a ``"template"`` (or ParaRel ``"pattern"``) per line, or plain text with one
template per line; any such file can also be given directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from softprompt.errors import SoftpromptError
from softprompt.io import excerpt, read_jsonl
from softprompt.probing.relations import check_template, read_text_lines

# (dataset, source) -> path of the per-relation file under the shared data root, "{r}" is the relation.
_QE = "qin_eisner_soft_prompts/prompts"
SOURCE_FILES: dict[tuple[str, str], str] = {
    ("trex", "sin"): f"{_QE}/trex/{{r}}.jsonl",
    ("trex", "par"): "lpaqa/prompt/paraphrase/{r}.jsonl",
    ("trex", "min"): "lpaqa/prompt/mine/{r}.jsonl",
    ("trex", "ran"): "lpaqa/prompt/mine/{r}.jsonl",
    ("trex", "pararel"): "pararel/patterns/{r}.jsonl",
    ("google_re", "sin"): f"{_QE}/google_re/{{r}}.jsonl",
    ("google_re", "par"): f"{_QE}/google_re_paraphrase/{{r}}.jsonl",
    ("google_re", "min"): f"{_QE}/google_re_mine/{{r}}.jsonl",
    ("google_re", "ran"): f"{_QE}/google_re_mine/{{r}}.jsonl",
    ("conceptnet", "omcs"): f"{_QE}/conceptnet/{{r}}.jsonl",
}
SOURCES = ("sin", "par", "min", "ran", "pararel", "omcs")
DATASETS = ("trex", "google_re", "conceptnet")


@dataclass(frozen=True)
class PromptSet:
    """The templates a mixture starts from, and how its soft vectors are initialised."""

    name: str
    templates: tuple[str, ...]
    init: str = "template"  # "random" for ran.

    def __post_init__(self) -> None:
        if not self.templates:
            raise SoftpromptError(f"prompt set {self.name!r} has no templates")


def read_template_list(path: str | Path) -> list[str]:
    """The templates of one file: JSONL (``"template"`` or ``"pattern"`` per line) or one per text line."""
    path = Path(path)
    templates: list[str] = []
    if path.suffix in (".jsonl", ".gz"):
        for lineno, row in read_jsonl(path):
            key = "template" if "template" in row else "pattern" if "pattern" in row else None
            if key is None:
                raise SoftpromptError(
                    f'{path}, line {lineno}: no "template" (or "pattern") key; found {excerpt(sorted(row))}; '
                    'write lines like {"template": "[X] was born in [Y] ."}'
                )
            check_template(row[key], f"{path}, line {lineno}: the template")
            templates.append(row[key])
    else:
        if not path.is_file():
            raise SoftpromptError(f"{path}: no such file; check the path")
        for lineno, line in enumerate(read_text_lines(path), start=1):
            if line.strip():
                check_template(line.strip(), f"{path}, line {lineno}: the template")
                templates.append(line.strip())
    if not templates:
        raise SoftpromptError(f"no templates in {path}; add one per line, e.g. [X] was born in [Y] .")
    return templates


def prompt_set(source: str, relation: str, root: str | Path, dataset: str = "trex") -> PromptSet:
    """The ``source`` prompts of ``relation`` from the staged data under ``root`` (../shared/data)."""
    if source not in SOURCES:
        raise SoftpromptError(f"unknown prompt source {source!r}; choose one of: {', '.join(SOURCES)}")
    if dataset not in DATASETS:
        raise SoftpromptError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    pattern = SOURCE_FILES.get((dataset, source))
    if pattern is None:
        have = ", ".join(s for d, s in SOURCE_FILES if d == dataset)
        raise SoftpromptError(f"no {source!r} prompts for dataset {dataset!r}; it has: {have}")
    path = Path(root) / pattern.format(r=relation)
    if not path.is_file():
        raise SoftpromptError(f"{path}: no {source!r} prompts for relation {relation!r} (no such file)")
    templates = read_template_list(path)
    if source == "sin":
        templates = templates[:1]  # a manual file may hold variants; the first is the LAMA template
    return PromptSet(f"{source}:{relation}", tuple(templates), "random" if source == "ran" else "template")


def prompt_set_from_file(path: str | Path, init: str = "template") -> PromptSet:
    """A user's own prompt set."""
    return PromptSet(str(path), tuple(read_template_list(path)), init)
