"""LAMA-style templates such as ``"[X] was born in [Y] ."`` and their tokenisation for one model.

A template's own tokens are the *prompt positions*: a hard prompt embeds them as words, a soft prompt
replaces each by a trainable vector. A ``[T]`` is a *trigger*: a prompt position with no word of its own,
which a discrete search fills (``"[X] [T] [T] [T] [Y]"``, or ``"[X] [T] born in [Y]"`` with words kept).
The subject [X] is always embedded as words. The answer [Y] is predicted at one position: the [MASK] for
masked LMs, the next token after the prompt for causal LMs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from softprompt.errors import SoftpromptError
from softprompt.io import excerpt
from softprompt.models import LanguageModel

SLOT = re.compile(r"\[(X|Y)\]")
# A trigger: a prompt position without a word of its own, for a search to fill (AutoPrompt's [T]).
TRIGGER = "[T]"
TRIGGER_ID = -1  # where a trigger stands among a piece's token ids, until it gets the pad token as placeholder


@dataclass(frozen=True)
class Template:
    """A parsed template: the text before, between and after its [X] and [Y] slots."""

    text: str

    def __post_init__(self) -> None:
        # Templates come from JSON, YAML and prompt files, where any value can stand in for one.
        if not isinstance(self.text, str):
            raise SoftpromptError(
                f"a template must be a string, got {type(self.text).__name__} {excerpt(self.text)}; "
                "write it like '[X] was born in [Y] .'"
            )
        slots = SLOT.findall(self.text)
        for slot in "XY":
            if slots.count(slot) != 1:
                found = "no" if slot not in slots else f"{slots.count(slot)}"
                raise SoftpromptError(
                    f"template {excerpt(self.text)} has {found} [{slot}] slot(s); it needs exactly one [X] "
                    "(the subject) and one [Y] (the answer), e.g. '[X] was born in [Y] .'"
                )

    @property
    def answer_first(self) -> bool:
        return self.text.index("[Y]") < self.text.index("[X]")

    def answer_last(self) -> Template:
        """The same words with [Y] moved to the end: ``"[Y] native [X] ."`` -> ``"native [X] . [Y]"``.

        A causal LM can only predict [Y] as the next token, so answer-first templates (most LPAQA mined
        prompts) are reordered for it. Their tokens keep their order around [X]; for soft prompts,
        which are tuned anyway, this keeps the prompt's length and its position relative to [X].
        """
        if not self.answer_first:
            return self
        before, middle, after = self.pieces
        return Template(" ".join(f"{before} {middle} [X] {after} [Y]".split()))

    @property
    def pieces(self) -> tuple[str, str, str]:
        """(before the first slot, between the slots, after the second slot)."""
        # SLOT.split keeps the captured slot names: [before, 'X', middle, 'Y', after].
        before, _, middle, _, after = SLOT.split(self.text)
        return before, middle, after


@dataclass(frozen=True)
class Example:
    """One encoded query: token ids, which positions are prompt vectors, where the answer is read."""

    input_ids: tuple[int, ...]
    prompt_slots: tuple[int, ...]  # index into the prompt's vectors, -1 for ordinary tokens
    answer_position: int
    answer_id: int
    subject_span: tuple[int, int] = (0, 0)  # [start, end) of the subject's tokens

    def __len__(self) -> int:
        return len(self.input_ids)


class TemplateEncoder:
    """Tokenises a template once for a model, then encodes (subject, answer) pairs against it.

    ``answer_space`` overrides whether the answer is tokenised as a word preceded by a space (by default
    it follows the template). Mixtures fix it, so that every prompt scores the same answer token.
    """

    def __init__(self, template: Template | str, lm: LanguageModel, answer_space: bool | None = None) -> None:
        self.template = template if isinstance(template, Template) else Template(template)
        self.lm = lm
        before, middle, after = self.template.pieces
        if lm.kind == "seq2seq":
            raise SoftpromptError(
                f"model '{lm.name}' is an encoder-decoder; fact probing with [X]/[Y] templates needs a causal or "
                "masked LM (encoder-decoders work with tasks: softprompt task ...)"
            )
        if self.template.answer_first and lm.kind == "causal":
            raise SoftpromptError(
                f"template {self.template.text!r} puts the answer [Y] before the subject [X]; a causal LM "
                "predicts [Y] as the next token after the prompt, so [X] must come first. Rephrase the "
                "template (e.g. '[X] ... [Y] .'), or use a masked LM."
            )
        first, second = ("Y", "X") if self.template.answer_first else ("X", "Y")
        if lm.kind == "causal":
            after = ""  # nothing after [Y] can influence a left-to-right prediction of [Y]
        # Each piece carries the space that preceded it, as BPE vocabularies attach spaces to the next word.
        self._space_before = {first: before[-1:].isspace(), second: middle[-1:].isspace()}
        if answer_space is not None:
            self._space_before["Y"] = answer_space
        pieces = [self._piece(before, False), self._piece(middle, middle[:1].isspace()),
                  self._piece(after, after[:1].isspace())]
        specials_before, specials_after = lm.special_affixes
        if lm.kind == "causal":
            specials_after = []  # e.g. an appended </s>: it would come after the answer position
        self.prompt_ids: tuple[int, ...] = tuple(pieces[0] + pieces[1] + pieces[2])
        self.triggers: tuple[int, ...] = tuple(i for i, t in enumerate(self.prompt_ids) if t == TRIGGER_ID)
        self.prompt_ids = tuple(lm.tokenizer.pad_token_id if t == TRIGGER_ID else t for t in self.prompt_ids)
        # The layout of one query, with "X"/"Y" standing for the subject tokens and the answer position.
        layout: list[int | str] = [*specials_before]
        index = 0
        for piece, slot in zip(pieces, [first, second, None], strict=True):
            for _ in piece:
                layout.append(f"p{index}")
                index += 1
            if slot is not None:
                layout.append(slot)
        self._layout = layout + list(specials_after)
        if lm.kind == "causal":
            self._layout = [item for item in self._layout if item != "Y"]

    @property
    def reading_order(self) -> list[str | int]:
        """The template as the model reads it: prompt token indices with "X" and "Y" where the subject
        and the answer go (for causal LMs, "Y" is the next token after the prompt)."""
        order: list[str | int] = [int(item[1:]) if item.startswith("p") else item
                                  for item in self._layout if isinstance(item, str)]
        return [*order, "Y"] if self.lm.kind == "causal" else order

    @property
    def answer_space(self) -> bool:
        return self._space_before["Y"]

    @property
    def signature(self) -> tuple:
        """Equal for two templates that encode every fact identically (e.g. differing only after [Y])."""
        return tuple(self._layout), self.prompt_ids, self._space_before["X"], self._space_before["Y"]

    def _ids(self, text: str, leading_space: bool) -> list[int]:
        text = text.strip()
        if not text:
            return []
        if leading_space:
            text = " " + text
        return self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _piece(self, text: str, leading_space: bool) -> list[int]:
        """A piece's token ids, with ``TRIGGER_ID`` for each [T] trigger (words after a trigger are words of
        their own: each starts with a space)."""
        ids: list[int] = []
        for i, part in enumerate(text.split(TRIGGER)):
            ids += ([TRIGGER_ID] if i else []) + self._ids(part, leading_space if i == 0 else True)
        return ids

    def answer_tokens(self, answer: str) -> tuple[int, ...]:
        """The token ids of ``answer`` in this template's context (several for a multi-token answer)."""
        return tuple(self._ids(answer, self._space_before["Y"]))

    def answer_id(self, answer: str) -> int | None:
        """The single token id of ``answer`` in this template's context, or None if it is several tokens
        (or only the unknown token, which stands for no word in particular)."""
        ids = self.answer_tokens(answer)
        return ids[0] if len(ids) == 1 and ids[0] != self.lm.tokenizer.unk_token_id else None

    def encode(self, subject: str, answer: str) -> Example | None:
        """Encode one fact; None when its answer is not a single token for this model."""
        answer_id = self.answer_id(answer)
        if answer_id is None:
            return None
        return self.query(subject, answer_id, f" for answer {answer!r}")

    def query(self, subject: str, answer_id: int = -1, context: str = "") -> Example:
        """The query about ``subject``; ``answer_id`` is -1 where the answer is not one token but is scored
        among candidate answers. ``context`` ends the message of an empty subject."""
        subject_ids = self._ids(subject, self._space_before["X"])
        if not subject_ids:
            raise SoftpromptError(f"empty subject{context}")
        input_ids: list[int] = []
        slots: list[int] = []
        answer_position = -1
        subject_start = -1
        for item in self._layout:
            if item == "X":
                subject_start = len(input_ids)
                input_ids += subject_ids
                slots += [-1] * len(subject_ids)
            elif item == "Y":
                answer_position = len(input_ids)
                input_ids.append(self.lm.tokenizer.mask_token_id)
                slots.append(-1)
            elif isinstance(item, str):
                index = int(item[1:])
                input_ids.append(self.prompt_ids[index])
                slots.append(index)
            else:
                input_ids.append(item)
                slots.append(-1)
        if answer_position < 0:  # causal: the answer is the next token after the last one
            answer_position = len(input_ids) - 1
        self.lm.check_length(len(input_ids), f"the query for subject {subject[:40]!r}")
        subject_span = (subject_start, subject_start + len(subject_ids))
        return Example(tuple(input_ids), tuple(slots), answer_position, answer_id, subject_span)
