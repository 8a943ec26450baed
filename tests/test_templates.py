"""Tests for softprompt.templates: parsing templates and tokenising queries against them."""

from __future__ import annotations

import pytest
from conftest import byte_bpe_tokenizer, tiny_causal
from tokenizers import processors

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.templates import Template, TemplateEncoder


def tokens(lm: LanguageModel, ids) -> list[str]:
    return lm.tokenizer.convert_ids_to_tokens(list(ids))


def ids_of(lm: LanguageModel, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_template_pieces_and_order():
    """A template splits into the text before, between and after its two slots."""
    template = Template("The capital of [X] is [Y] .")
    assert template.pieces == ("The capital of ", " is ", " .")
    assert not template.answer_first
    flipped = Template("[Y] is the capital of [X].")
    assert flipped.pieces == ("", " is the capital of ", ".")
    assert flipped.answer_first


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[X] is a city .", r"has no \[Y\] slot"),
        ("The capital is [Y] .", r"has no \[X\] slot"),
        ("[X] and [X] are in [Y] .", r"has 2 \[X\] slot"),
        ("[X] is [Y] or [Y] .", r"has 2 \[Y\] slot"),
        ("[x] is [y] .", r"has no \[X\] slot"),
    ],
)
def test_template_needs_exactly_one_of_each_slot(text, problem):
    """A missing or repeated slot is a SoftpromptError naming that slot and quoting the template."""
    with pytest.raises(SoftpromptError, match=problem) as info:
        Template(text)
    assert repr(text) in str(info.value)


def test_causal_encoder_ignores_text_after_answer(causal_lm):
    """For a causal LM nothing after [Y] is encoded: the answer is read at the last prompt token."""
    short = TemplateEncoder("The capital of [X] is [Y] .", causal_lm)
    long = TemplateEncoder("The capital of [X] is [Y] , a city in Europe .", causal_lm)
    assert short.prompt_ids == long.prompt_ids
    assert short.encode("France", "Paris") == long.encode("France", "Paris")
    example = short.encode("France", "Paris")
    assert example.answer_position == len(example) - 1
    assert tokens(causal_lm, example.input_ids)[-1] == "Ġis"
    assert causal_lm.tokenizer.mask_token_id not in example.input_ids


def test_masked_encoder_keeps_text_after_answer(masked_lm):
    """For a masked LM the text after [Y] is part of the prompt, and [Y] becomes one [MASK]."""
    short = TemplateEncoder("The capital of [X] is [Y] .", masked_lm)
    long = TemplateEncoder("The capital of [X] is [Y] , a city in Europe .", masked_lm)
    assert len(long.prompt_ids) > len(short.prompt_ids)
    example = long.encode("France", "Paris")
    assert example.input_ids[example.answer_position] == masked_lm.tokenizer.mask_token_id
    assert example.input_ids.count(masked_lm.tokenizer.mask_token_id) == 1
    after = tokens(masked_lm, example.input_ids[example.answer_position + 1 :])
    assert after == [",", "a", "city", "in", "Europe", ".", "[SEP]"]


def test_answer_before_subject_is_refused_for_causal_lm(causal_lm):
    """A causal LM cannot predict [Y] from a subject that comes after it: a clear error says so."""
    with pytest.raises(SoftpromptError, match=r"answer \[Y\] before the subject \[X\]"):
        TemplateEncoder("[Y] is the capital of [X] .", causal_lm)


def test_answer_before_subject_works_for_masked_lm(masked_lm):
    """On a masked LM an answer-first template puts the [MASK] before the subject tokens."""
    encoder = TemplateEncoder("[Y] is the capital of [X] .", masked_lm)
    example = encoder.encode("France", "Paris")
    toks = tokens(masked_lm, example.input_ids)
    assert toks == ["[CLS]", "[MASK]", "is", "the", "capital", "of", "France", ".", "[SEP]"]
    assert example.answer_position == 1 < toks.index("France")
    assert example.answer_id == ids_of(masked_lm, "Paris")[0]


def test_byte_bpe_subject_and_answer_carry_their_leading_space(causal_lm):
    """With a byte-level BPE the subject after "of" is "ĠFrance" and the answer id is that of " Paris"."""
    encoder = TemplateEncoder("The capital of [X] is [Y] .", causal_lm)
    example = encoder.encode("France", "Paris")
    subject = [i for i, slot in zip(example.input_ids, example.prompt_slots, strict=True) if slot < 0]
    assert tokens(causal_lm, subject) == ["ĠFrance"]
    assert example.answer_id == ids_of(causal_lm, " Paris")[0]
    assert tokens(causal_lm, [example.answer_id]) == ["ĠParis"]
    assert example.answer_id != ids_of(causal_lm, "Paris")[0]  # sanity: the space matters here


def test_subject_at_sentence_start_has_no_leading_space(causal_lm):
    """A subject that starts the template is tokenised without a space; text glued to it keeps none."""
    encoder = TemplateEncoder("[X]'s capital is [Y] .", causal_lm)
    example = encoder.encode("France", "Paris")
    n = len(ids_of(causal_lm, "France"))
    assert list(example.input_ids[:n]) == ids_of(causal_lm, "France")
    assert list(example.input_ids[n:]) == ids_of(causal_lm, "'s capital is")
    assert example.prompt_slots == (-1,) * n + tuple(range(len(encoder.prompt_ids)))


def test_multi_token_answers_are_rejected(causal_lm):
    """An answer that is several tokens cannot be ranked: answer_id and encode return None."""
    encoder = TemplateEncoder("The capital of [X] is [Y] .", causal_lm)
    assert len(ids_of(causal_lm, " Zanzibar")) > 1
    assert encoder.answer_id("Zanzibar") is None
    assert encoder.encode("France", "Zanzibar") is None
    assert encoder.encode("France", "New Paris") is None
    # A multi-token subject is fine.
    assert encoder.encode("New Zanzibar", "Paris") is not None


def test_unknown_word_answers_are_rejected_for_wordpiece(masked_lm):
    """A WordPiece answer that is only [UNK] is not a real token to predict: encode returns None."""
    encoder = TemplateEncoder("The capital of [X] is [Y] .", masked_lm)
    assert ids_of(masked_lm, "Zanzibar") == [masked_lm.tokenizer.unk_token_id]
    assert encoder.answer_id("Zanzibar") is None
    assert encoder.encode("France", "Zanzibar") is None


def test_bert_specials_wrap_the_query_and_are_not_prompt_slots(masked_lm):
    """[CLS] and [SEP] surround the query; only the template's own tokens are prompt slots, in order."""
    encoder = TemplateEncoder("the capital of [X] is [Y] .", masked_lm)
    example = encoder.encode("Peru", "Lima")
    tok = masked_lm.tokenizer
    assert example.input_ids[0] == tok.cls_token_id
    assert example.input_ids[-1] == tok.sep_token_id
    assert example.prompt_slots[0] == example.prompt_slots[-1] == -1
    assert tok.cls_token_id not in encoder.prompt_ids and tok.sep_token_id not in encoder.prompt_ids
    assert tokens(masked_lm, example.input_ids) == [
        "[CLS]", "the", "capital", "of", "Peru", "is", "[MASK]", ".", "[SEP]"
    ]


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_prompt_slots_index_the_template_tokens(which, request):
    """Slots 0..P-1 appear once each, in order, at positions holding the template's own token ids."""
    lm = request.getfixturevalue(f"{which}_lm")
    encoder = TemplateEncoder("the capital of [X] is [Y] , a city .", lm)
    for subject in ["France", "Japan city of Tokyo"]:
        example = encoder.encode(subject, "Paris")
        slots = [s for s in example.prompt_slots if s >= 0]
        assert slots == list(range(len(encoder.prompt_ids)))
        for token, slot in zip(example.input_ids, example.prompt_slots, strict=True):
            if slot >= 0:
                assert token == encoder.prompt_ids[slot]


def test_empty_subject_is_an_error(causal_lm):
    """An empty subject cannot fill [X]."""
    encoder = TemplateEncoder("[X] is [Y] .", causal_lm)
    with pytest.raises(SoftpromptError, match="empty subject"):
        encoder.encode("  ", "Paris")


def test_causal_tokenizer_that_appends_eos_reads_answer_before_it():
    """If a causal tokenizer appends an end token, the answer is still read at the last prompt token."""
    lm = tiny_causal()
    tok = byte_bpe_tokenizer()
    eos = tok.eos_token_id
    post = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", eos)])
    tok._tokenizer.post_processor = post
    assert tok("x")["input_ids"][-1] == eos
    lm = LanguageModel(lm.model, tok, name="tiny-llama-eos", kind="causal")
    example = TemplateEncoder("The capital of [X] is [Y] .", lm).encode("France", "Paris")
    assert tokens(lm, example.input_ids)[example.answer_position] == "Ġis"
    assert eos not in example.input_ids[: example.answer_position + 1]
