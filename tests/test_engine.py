"""Tests for softprompt.engine: answer-position logits under hard, soft and deep prompts.

Each result is compared against a plain Hugging Face forward pass of one unpadded query, so the
engine's batching, padding, position ids, vector insertion and layer hooks are all checked end to end.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from conftest import byte_bpe_tokenizer, tiny_causal
from transformers import GPT2Config, GPT2LMHeadModel

from softprompt.engine import CPU_EVAL_TOKENS, Engine, length_batches, length_groups
from softprompt.models import LanguageModel
from softprompt.prompts import DeepPrompt, HardPrompt, SoftPrompt
from softprompt.templates import Example, TemplateEncoder

TEMPLATE = "The capital of [X] is [Y] ."
# Subjects of 1 to 5 tokens for both tiny tokenizers, so batches need padding.
FACTS = [
    ("France", "Paris"),
    ("Japan city of Tokyo", "Tokyo"),
    ("Peru", "Lima"),
    ("the native language of Italy", "Rome"),
    ("Spain Madrid", "Madrid"),
    ("Egypt", "Cairo"),
]


@pytest.fixture(scope="module")
def gpt2_lm():
    """A tiny GPT-2: learned absolute positions, so left padding only works with corrected position ids."""
    tokenizer = byte_bpe_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return LanguageModel(GPT2LMHeadModel(config), tokenizer, name="tiny-gpt2", kind="causal")


@pytest.fixture(params=["causal", "masked", "gpt2"])
def lm(request):
    return request.getfixturevalue(f"{request.param}_lm")


def final_norm(lm):
    """The module that consumes the last layer's output: final norm (causal) or the MLM head (BERT)."""
    model = lm.model
    return {"llama": lambda: model.model.norm, "gpt2": lambda: model.transformer.ln_f,
            "bert": lambda: model.cls}[model.config.model_type]()


def encode(lm, template=TEMPLATE, facts=FACTS):
    encoder = TemplateEncoder(template, lm)
    examples = [encoder.encode(s, a) for s, a in facts]
    assert all(e is not None for e in examples)
    assert len({len(e) for e in examples}) > 2, "the examples should differ in length"
    return encoder, examples


def random_deep(encoder, seed=0, scale=0.5):
    prompt = DeepPrompt(encoder, init="random", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        prompt.delta.copy_(scale * torch.randn(prompt.delta.shape, generator=gen))
    return prompt


def logits_of(engine, examples, prompt):
    with torch.no_grad():
        return engine.answer_logits(engine.collate(examples), prompt.vectors(), prompt.deltas())


def max_diff(a, b):
    return (a - b).abs().max().item()


def brute_force(lm, example, vectors=None, deltas=None):
    """Logits at the answer position from a plain forward of one unpadded query.

    Soft vectors replace the prompt positions' input embeddings; deltas[0] is added to them and
    deltas[l] (l >= 1) to the *input* of whatever consumes layer l's output (the next layer, the final
    norm or the LM head), with pre-hooks, independently of the engine's post-hooks on the layers.
    """
    ids = torch.tensor([example.input_ids])
    slots = torch.tensor(example.prompt_slots)
    positions = (slots >= 0).nonzero()[:, 0]
    embeds = lm.embed(ids).clone()
    if vectors is not None:
        embeds[0, positions] = vectors[slots[positions]]
    handles = []
    if deltas is not None:
        embeds[0, positions] += deltas[0][slots[positions]]
        consumers = [*list(lm.layers)[1:], final_norm(lm)]
        for layer_index, module in enumerate(consumers, start=1):
            def add(_module, args, kwargs, delta=deltas[layer_index]):
                hidden = (args[0] if args else kwargs["hidden_states"]).clone()
                hidden[:, positions] += delta[slots[positions]]
                if args:
                    return (hidden, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hidden}

            handles.append(module.register_forward_pre_hook(add, with_kwargs=True))
    try:
        with torch.no_grad():
            hard = vectors is None and deltas is None
            out = lm.model(input_ids=ids) if hard else lm.model(inputs_embeds=embeds)
    finally:
        for handle in handles:
            handle.remove()
    return out.logits[0, example.answer_position]


def test_template_soft_prompt_reproduces_hard_prompt(lm):
    """A soft prompt initialised from the template gives the hard prompt's answer logits."""
    encoder, examples = encode(lm)
    engine = Engine(lm)
    hard = logits_of(engine, examples, HardPrompt(encoder))
    soft = logits_of(engine, examples, SoftPrompt(encoder, init="template"))
    assert max_diff(soft, hard) <= 1e-5
    other = logits_of(engine, examples, SoftPrompt(encoder, init="random"))
    assert max_diff(other, hard) > 1e-4  # sanity: the vectors do reach the model


def test_zero_delta_deep_prompt_reproduces_soft_prompt(lm):
    """A deep prompt starts with zero perturbations: exactly its soft prompt; nonzero deltas matter."""
    encoder, examples = encode(lm)
    engine = Engine(lm)
    soft = logits_of(engine, examples, SoftPrompt(encoder, init="random", seed=3))
    deep = DeepPrompt(encoder, init="random", seed=3)
    assert torch.equal(deep.delta, torch.zeros_like(deep.delta))
    assert max_diff(logits_of(engine, examples, deep), soft) <= 1e-5
    perturbed = random_deep(encoder, seed=3)
    assert max_diff(logits_of(engine, examples, perturbed), soft) > 1e-4


def test_layer0_delta_equals_shifted_soft_vectors(lm):
    """Perturbing layer 0 only is the same as tuning the input vectors directly (paper §3.2)."""
    encoder, examples = encode(lm)
    engine = Engine(lm)
    deep = DeepPrompt(encoder, init="random", seed=1)
    with torch.no_grad():
        deep.delta[0] = torch.randn(deep.delta.shape[1:], generator=torch.Generator().manual_seed(5))
    shifted = (deep.base + deep.delta[0]).detach()
    with torch.no_grad():
        direct = engine.answer_logits(engine.collate(examples), shifted, None)
    assert max_diff(logits_of(engine, examples, deep), direct) <= 1e-5


def test_batched_logits_equal_one_query_at_a_time(lm):
    """Batching queries of different lengths (with padding) does not change any query's logits."""
    encoder, examples = encode(lm)
    engine = Engine(lm)
    for prompt in [HardPrompt(encoder), SoftPrompt(encoder, init="random"), random_deep(encoder)]:
        together = logits_of(engine, examples, prompt)
        for i, example in enumerate(examples):
            alone = logits_of(engine, [example], prompt)
            assert max_diff(together[i : i + 1], alone) <= 1e-5


@pytest.mark.parametrize("which", ["causal", "gpt2"])
def test_left_and_right_padding_agree_on_causal_model(which, request):
    """A causal LM gives the same answer logits under left and right padding."""
    lm = request.getfixturevalue(f"{which}_lm")
    encoder, examples = encode(lm)
    left, right = Engine(lm, padding_side="left"), Engine(lm, padding_side="right")
    assert Engine(lm).padding_side == "left"
    for prompt in [HardPrompt(encoder), SoftPrompt(encoder, init="random"), random_deep(encoder)]:
        assert max_diff(logits_of(left, examples, prompt), logits_of(right, examples, prompt)) <= 1e-5


def test_hard_prompt_logits_equal_plain_forward(lm):
    """Engine logits for a hard prompt equal the model's own logits at the answer position."""
    encoder, examples = encode(lm)
    logits = logits_of(Engine(lm), examples, HardPrompt(encoder))
    for i, example in enumerate(examples):
        assert max_diff(logits[i], brute_force(lm, example)) <= 1e-5


def test_soft_prompt_logits_equal_forward_with_hand_built_embeddings(lm):
    """Engine logits for soft vectors equal a forward pass on inputs_embeds assembled by hand."""
    encoder, examples = encode(lm)
    prompt = SoftPrompt(encoder, init="random", seed=7)
    logits = logits_of(Engine(lm), examples, prompt)
    for i, example in enumerate(examples):
        assert max_diff(logits[i], brute_force(lm, example, prompt.weight.detach())) <= 1e-5


def test_deep_prompt_logits_equal_independent_implementation(lm):
    """Engine logits for a deep prompt equal per-layer perturbations applied with pre-hooks."""
    encoder, examples = encode(lm)
    prompt = random_deep(encoder, seed=2)
    logits = logits_of(Engine(lm), examples, prompt)
    for i, example in enumerate(examples):
        expected = brute_force(lm, example, prompt.base, prompt.delta.detach())
        assert max_diff(logits[i], expected) <= 1e-5


@pytest.mark.parametrize("which", ["causal", "gpt2"])
def test_last_layer_delta_shifts_prompt_states_by_exactly_delta(which, request):
    """On a causal LM the delta of layer L moves each prompt position's final pre-norm state by itself.

    The answer of "The capital of [X] is [Y] ." is read at the prompt token " is", so its hidden state
    before the final norm moves by exactly that slot's delta; ordinary tokens do not move at all.
    """
    lm = request.getfixturevalue(f"{which}_lm")
    encoder, examples = encode(lm)
    engine = Engine(lm)
    batch = engine.collate(examples)
    captured = []
    handle = final_norm(lm).register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    zero = DeepPrompt(encoder)
    last = DeepPrompt(encoder)
    delta = torch.randn(last.delta.shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        last.delta[-1] = delta
    try:
        with torch.no_grad():
            engine.answer_hidden(batch, zero.vectors(), zero.deltas())
            engine.answer_hidden(batch, last.vectors(), last.deltas())
    finally:
        handle.remove()
    before, after = captured
    slots = batch.prompt_slots
    expected = torch.where((slots >= 0)[..., None], delta[slots.clamp(min=0)], torch.zeros(()))
    assert max_diff(after - before, expected) <= 1e-5
    assert torch.equal(after[slots < 0], before[slots < 0])
    rows = torch.arange(len(batch))
    answer_slots = slots[rows, batch.answer_positions]
    assert (answer_slots >= 0).all()
    assert max_diff(after[rows, batch.answer_positions] - before[rows, batch.answer_positions],
                    delta[answer_slots]) <= 1e-5


def test_last_layer_delta_cannot_reach_a_mask_answer(masked_lm):
    """On a masked LM the answer is at [MASK], not a prompt position: a layer-L delta leaves it as is."""
    encoder, examples = encode(masked_lm)
    engine = Engine(masked_lm)
    last = DeepPrompt(encoder)
    with torch.no_grad():
        last.delta[-1] = 10 * torch.randn(last.delta.shape[1:], generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits_of(engine, examples, last), logits_of(engine, examples, DeepPrompt(encoder)))
    earlier = DeepPrompt(encoder)
    with torch.no_grad():
        earlier.delta[-2] = last.delta[-1]
    assert max_diff(logits_of(engine, examples, earlier), logits_of(engine, examples, last)) > 1e-4


def test_lm_head_sees_only_answer_positions(lm):
    """The vocabulary projection runs on one (B, d) hidden state per query, never on (B, T, d)."""
    encoder, examples = encode(lm)
    engine = Engine(lm)
    shapes = []
    handle = lm.model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _o: shapes.append(tuple(args[0].shape))
    )
    try:
        logits = logits_of(engine, examples, SoftPrompt(encoder))
    finally:
        handle.remove()
    assert shapes == [(len(examples), lm.hidden_size)]
    assert logits.shape == (len(examples), lm.vocab_size)
    assert logits.dtype == torch.float32


def test_collate_pads_and_shifts_answer_positions(causal_lm):
    """Collation pads with the pad id on the requested side and moves answer positions with the padding."""
    _, examples = encode(causal_lm)
    pad = causal_lm.tokenizer.pad_token_id
    width = max(len(e) for e in examples)
    for side in ("left", "right"):
        batch = Engine(causal_lm, padding_side=side).collate(examples)
        assert batch.input_ids.shape == (len(examples), width)
        for row, e in enumerate(examples):
            start = width - len(e) if side == "left" else 0
            assert batch.input_ids[row, start : start + len(e)].tolist() == list(e.input_ids)
            assert batch.prompt_slots[row, start : start + len(e)].tolist() == list(e.prompt_slots)
            assert batch.attention_mask[row].sum() == len(e)
            assert (batch.input_ids[row][batch.attention_mask[row] == 0] == pad).all()
            assert (batch.prompt_slots[row][batch.attention_mask[row] == 0] == -1).all()
            assert batch.answer_positions[row] == start + e.answer_position
            assert batch.answer_ids[row] == e.answer_id


def fake_examples(n, seed=0):
    rng = random.Random(seed)
    return [Example(tuple(range(rng.randint(1, 30))), (), 0, 0) for _ in range(n)]


@pytest.mark.parametrize("seed", [None, 0, 1])
@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_length_batches_cover_every_index_once(seed, batch_size):
    """Every example index appears in exactly one batch, and no batch exceeds the batch size."""
    examples = fake_examples(403)
    batches = length_batches(examples, batch_size, shuffle_seed=seed)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(examples)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert len(batches) == -(-len(examples) // batch_size)


def test_length_batches_for_evaluation_are_sorted_by_length():
    """Without a seed the batches follow increasing length."""
    examples = fake_examples(200)
    lengths = [len(examples[i]) for b in length_batches(examples, 16) for i in b]
    assert lengths == sorted(lengths)
    assert length_batches([], 4) == []


def test_evaluation_batches_keep_to_a_token_budget():
    """With max_tokens, a batch grows while rows x its longest row fits (by hand: lengths 1..6, budget 6, at
    most 3 rows); a row longer than the budget is scored alone; the CPU engine caps its inference batches."""
    examples = [Example(tuple(range(n)), (), 0, 0) for n in (5, 1, 3, 2, 6, 4, 9)]
    assert length_batches(examples, 3, max_tokens=6) == [[1, 3], [2], [5], [0], [4], [6]]
    assert length_batches(examples, 2, max_tokens=100) == length_batches(examples, 2)
    assert length_batches([], 4, max_tokens=6) == []
    many = fake_examples(403)
    batches = Engine(tiny_causal()).eval_batches(many, 1000)
    assert sorted(i for b in batches for i in b) == list(range(403))
    assert all(len(b) * max(len(many[i]) for i in b) <= CPU_EVAL_TOKENS for b in batches)
    assert len(batches) < len(length_batches(many, 1))  # rows share batches


def test_length_batches_shuffle_is_seeded():
    """The training order is the same for one seed, differs across seeds, and batches stay length-sorted."""
    examples = fake_examples(500)
    a = length_batches(examples, 8, shuffle_seed=11)
    assert a == length_batches(examples, 8, shuffle_seed=11)
    assert a != length_batches(examples, 8, shuffle_seed=12)
    assert a != length_batches(examples, 8)
    for batch in a:
        lengths = [len(examples[i]) for i in batch]
        assert lengths == sorted(lengths)


def group_cost(groups, lengths, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


def contiguous_splits(n):
    """Every way to cut 0..n-1 into contiguous runs."""
    for cuts in itertools.product([False, True], repeat=max(n - 1, 0)):
        groups, current = [], [0]
        for i, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(current)
                current = []
            current.append(i)
        yield [*groups, current]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("overhead", [0, 5, 64])
def test_length_groups_is_the_cheapest_split(seed, overhead):
    """Every row in exactly one group, groups in increasing length, and no split of the length-sorted rows
    into contiguous runs (which includes every split that keeps equal lengths together) costs less."""
    rng = random.Random(seed)
    lengths = [rng.choice([3, 4, 9, 10, 30]) for _ in range(rng.randint(1, 11))]
    groups = length_groups(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    spans = [(min(lengths[i] for i in g), max(lengths[i] for i in g)) for g in groups]
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    cheapest = min(group_cost([[order[i] for i in g] for g in split], lengths, overhead)
                   for split in contiguous_splits(len(lengths)))
    assert group_cost(groups, lengths, overhead) == cheapest


def test_length_groups_by_hand():
    # One call: 4 * 30 + 64 = 184 token positions; two: (3 * 5 + 64) + (30 + 64) = 173.
    assert length_groups([5, 30, 5, 5], call_overhead=64) == [[0, 2, 3], [1]]
    assert length_groups([5, 30, 5, 5], call_overhead=100) == [[0, 2, 3, 1]]
    assert length_groups([7, 3, 7, 3], call_overhead=0) == [[1, 3], [0, 2]]
    assert length_groups([]) == []


def test_masked_lm_refuses_left_padding(masked_lm):
    """BERT-style models take absolute positions from 0, so left padding would shift them silently."""
    with pytest.raises(ValueError, match="padded on the right"):
        Engine(masked_lm, padding_side="left")
