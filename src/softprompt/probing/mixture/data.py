"""A relation's facts encoded under every prompt of a mixture, and what became of a prompt set's templates.

Causal LMs predict [Y] as the next token, so answer-first templates (most LPAQA mined prompts, e.g.
``"[Y] native [X] ."``) are reordered to put [Y] last (``"native [X] . [Y]"``, see
``Template.answer_last``): the prompt keeps its tokens, its length and their order around [X], which
for soft prompts (tuned anyway) keeps what matters. Hard prompts reordered this way are often
ungrammatical, which the prompt-set report counts. All prompts of a mixture score the same answer
token: answers are tokenised as a word preceded by a space, whatever the template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.probing.probe import dropped_fact
from softprompt.probing.relations import SPLITS, Relation
from softprompt.prompts import MixturePrompt
from softprompt.templates import Example, Template, TemplateEncoder

AnswerFirst = Literal["reorder", "skip", "error"]


@dataclass
class PromptSetReport:
    """What became of a prompt set's templates for one model."""

    total: int
    reordered: int  # answer-first templates moved to answer-last (causal LMs)
    skipped: int  # answer-first templates left out (answer_first="skip")
    duplicates: int  # templates that encode every fact exactly as an earlier one does
    kept: int
    reorderings: list[tuple[str, str]] = field(default_factory=list)  # (template, its answer-last form)


def encode_prompt_set(
    templates: Sequence[str], lm: LanguageModel, answer_first: AnswerFirst = "reorder"
) -> tuple[list[TemplateEncoder], list[str], PromptSetReport]:
    """Encoders for the usable templates, their original wordings, and what was changed or dropped."""
    encoders: list[TemplateEncoder] = []
    sources: list[str] = []
    seen: set[tuple] = set()
    skipped = duplicates = 0
    reorderings: list[tuple[str, str]] = []
    for text in templates:
        template = Template(text)
        if template.answer_first and lm.kind == "causal":
            if answer_first == "skip":
                skipped += 1
                continue
            if answer_first == "reorder":
                template = template.answer_last()
                reorderings.append((text, template.text))
            # "error": TemplateEncoder explains why the template cannot be used
        encoder = TemplateEncoder(template, lm, answer_space=True)
        if encoder.signature in seen:
            duplicates += 1
            continue
        seen.add(encoder.signature)
        encoders.append(encoder)
        sources.append(text)
    if not encoders:
        raise SoftpromptError(f"none of the {len(templates)} templates is usable for model '{lm.name}' "
                              f"({skipped} answer-first templates skipped); use answer_first='reorder'")
    report = PromptSetReport(len(templates), len(reorderings), skipped, duplicates, len(encoders), reorderings)
    return encoders, sources, report


@dataclass(frozen=True)
class MixtureItem:
    """One fact encoded under each prompt of a mixture; prompt slots index the stacked vector table."""

    rows: tuple[Example, ...]

    def __len__(self) -> int:
        return max(len(row) for row in self.rows)

    @property
    def answer_id(self) -> int:
        return self.rows[0].answer_id


@dataclass
class MixtureData:
    name: str
    splits: dict[str, list[MixtureItem]]
    facts: dict[str, list[tuple[str, str]]]
    dropped: dict[str, int]  # facts whose answer is not a single token
    dropped_facts: list[dict[str, str]] = field(default_factory=list)  # those facts (probe.dropped_fact rows)


def encode_mixture_data(
    relation: Relation, mixture: MixturePrompt, limits: Mapping[str, int] | None = None
) -> MixtureData:
    """Every split under every prompt of ``mixture``; ``limits`` caps each split after filtering."""
    encoders = mixture.encoders
    splits: dict[str, list[MixtureItem]] = {}
    kept: dict[str, list[tuple[str, str]]] = {}
    dropped: dict[str, int] = {}
    dropped_facts: list[dict[str, str]] = []
    for split in SPLITS:
        items, facts = [], []
        for fact in relation.splits.get(split, []):
            rows = [e.encode(fact.subject, fact.answer) for e in encoders]
            if rows[0] is None:  # every prompt tokenises the answer alike (see encode_prompt_set)
                dropped_facts.append(dropped_fact(split, fact.subject, fact.answer))
                continue
            rows = [_offset(row, off) for row, off in zip(rows, mixture.offsets, strict=True)]
            items.append(MixtureItem(tuple(rows)))
            facts.append((fact.subject, fact.answer))
        dropped[split] = len(relation.splits.get(split, [])) - len(items)
        cap = (limits or {}).get(split)
        splits[split], kept[split] = items[:cap], facts[:cap]
    return MixtureData(relation.name, splits, kept, dropped, dropped_facts)


def _offset(example: Example, offset: int) -> Example:
    return replace(example, prompt_slots=tuple(s + offset if s >= 0 else -1 for s in example.prompt_slots))
