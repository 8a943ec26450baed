"""Scoring many candidate prompts on the same inputs, sharing the computation they have in common.

Discrete searches (AutoPrompt's token swaps, a genetic population, RLPrompt's samples) score K candidate
prompts on one batch of inputs. Scoring each candidate alone costs K forward passes over the whole batch.
Here:

- all candidates run in one batch (each input row once per candidate), their vectors stacked into one table;
- on causal LMs, the part of each row before the first prompt position where the candidates differ is the
  same for every candidate: it runs once and its key/value cache is shared by every candidate's copy of the
  row. AutoPrompt swaps one position, so everything before it is shared; a prompt that follows the input
  (a LAMA template's triggers after the subject, RLPrompt's "[input] [prompt] [answer]") shares the input.
  Where the model honours custom attention masks, the candidates' suffixes run side by side in each row on
  one copy of that cache (a block-diagonal 4-D mask keeps them apart), rather than on K copies of it: with
  long inputs (BoolQ's passages) copying the cache K times cost more than the suffixes themselves;
- a ``PrefixMemo`` keeps the prefixes built, so a search that scores new candidates on the same batch step
  after step (RLPrompt on all of a few-shot task's training items) runs the inputs once, not once a step;
- only the query positions are projected to the vocabulary, a chunk of candidates at a time, and the
  caller's ``read`` reduces them at once (a (K, Q, V) tensor of a population would not fit in memory).

The scores equal those of scoring each candidate alone up to float rounding (tests/test_prompt_scorer.py
holds them to 1e-5 under padding and length groups).
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from softprompt.engine import MAX_ROWS, Engine, Tokens


@dataclass
class Queries:
    """The outputs to read: (row, position) pairs of a batch, positions in the decoder for encoder-decoders."""

    rows: torch.Tensor  # (Q,)
    positions: torch.Tensor  # (Q,)


Read = Callable[[torch.Tensor], torch.Tensor]  # (k, Q, V) logits of k candidates -> (k, ...) what the caller keeps


@torch.inference_mode()
def score_candidates(engine: Engine, tokens: Tokens, queries: Queries, candidates: torch.Tensor, read: Read,
                     max_rows: int = MAX_ROWS, share_prefix: bool = True, memo: PrefixMemo | None = None,
                     pack: bool = True) -> torch.Tensor:
    """``read`` of the query logits under each candidate: ``candidates`` are ``(K, L, d)`` vectors for the
    batch's L prompt positions; returns ``(K, ...)``. Batches are padded as the engine pads them (encoder-
    decoder batches carry ``decoder_ids`` and ``decoder_mask``). ``memo`` keeps the prefixes built for later
    calls on the same batch. To measure them, ``share_prefix=False`` turns the prefix cache off and
    ``pack=False`` runs the suffixes on a copy of it per candidate."""
    rows = tokens.input_ids.shape[0]
    per_pass = max(1, min(len(candidates), max_rows // rows))
    prefix = None
    if share_prefix and engine.lm.kind == "causal" and engine.padding_side == "left" and len(candidates) > 1:
        differs = varying_positions(candidates)
        prefix = (SharedPrefix.build(engine, tokens, queries, candidates, differs) if memo is None
                  else memo.get(engine, tokens, queries, candidates, differs))
    out = []
    for start in range(0, len(candidates), per_pass):
        chunk = candidates[start : start + per_pass]
        logits = prefix.logits(chunk, pack) if prefix is not None else repeated_logits(engine, tokens, queries, chunk)
        out.append(read(logits))
    return torch.cat(out)


def varying_positions(candidates: torch.Tensor) -> torch.Tensor:
    """(L,) the prompt positions where the ``(K, L, d)`` candidates are not all equal."""
    return (candidates != candidates[:1]).flatten(2).any(-1).any(0)


def repeat_rows(tokens: Tokens, k: int, length: int) -> dict[str, torch.Tensor]:
    """The batch with each row repeated k times in a row (row b, candidate c at b·k + c), each copy's prompt
    positions pointing at its candidate's rows of the stacked table."""
    slots = tokens.prompt_slots.repeat_interleave(k, 0)
    offsets = (torch.arange(len(slots), device=slots.device) % k * length)[:, None]
    return {"input_ids": tokens.input_ids.repeat_interleave(k, 0),
            "attention_mask": tokens.attention_mask.repeat_interleave(k, 0),
            "prompt_slots": torch.where(slots >= 0, slots + offsets, slots)}


@dataclass
class _Rows:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_slots: torch.Tensor
    decoder_ids: torch.Tensor | None = None
    decoder_mask: torch.Tensor | None = None


def candidate_major(hidden: torch.Tensor, queries: Queries, k: int) -> torch.Tensor:
    """(k, Q, ...) from per-row outputs (B·k, T, ...) of rows repeated k times, read at the queries."""
    index = queries.rows[None] * k + torch.arange(k, device=queries.rows.device)[:, None]  # (k, Q)
    return hidden[index, queries.positions[None].expand(k, -1)]


def repeated_logits(engine: Engine, tokens: Tokens, queries: Queries, candidates: torch.Tensor) -> torch.Tensor:
    """Query logits (k, Q, V) of k candidates from one pass over the batch's rows repeated per candidate."""
    k, length = candidates.shape[:2]
    rows = _Rows(**repeat_rows(tokens, k, length))
    vectors = candidates.reshape(k * length, -1)
    if engine.lm.kind == "seq2seq":
        rows.decoder_ids = tokens.decoder_ids.repeat_interleave(k, 0)
        rows.decoder_mask = tokens.decoder_mask.repeat_interleave(k, 0)
        return candidate_major(engine.seq2seq_logits(rows, vectors), queries, k)
    return engine.project(candidate_major(engine.final_hidden(rows, vectors), queries, k))


@dataclass
class SharedPrefix:
    """A causal batch split at each row's first position that differs between the candidates: the prefixes'
    key/value cache (computed once) and the suffixes that each candidate runs on top of it."""

    engine: Engine
    cache: object  # the body's key/value cache of the prefixes
    prefix_mask: torch.Tensor  # (B, P), prefixes padded on the left
    suffix: _Rows  # (B, S), suffixes padded on the right
    suffix_positions: torch.Tensor  # (B, S) position ids
    queries: Queries  # positions within the suffixes

    @classmethod
    def build(cls, engine: Engine, tokens: Tokens, queries: Queries, candidates: torch.Tensor,
              differs: torch.Tensor) -> SharedPrefix | None:
        """The prefixes up to each row's first prompt position in ``differs`` (L,) (those where the candidates
        differ, or every one for a gradient) or its first query, whichever comes first."""
        ids, mask, slots = tokens.input_ids, tokens.attention_mask, tokens.prompt_slots
        rows, width = ids.shape
        varying = (slots >= 0) & differs[slots.clamp(min=0)]
        position = torch.arange(width, device=ids.device).expand(rows, -1)
        first_varying = torch.where(varying, position, width).amin(1)
        first_query = torch.full((rows,), width, device=ids.device).scatter_reduce(0, queries.rows, queries.positions,
                                                                                  "amin")
        split = torch.minimum(first_varying, first_query)  # a query's own position must run per candidate
        start = width - mask.sum(1)  # rows are padded on the left
        prefix_width = int((split - start).max())
        if prefix_width <= 0:
            return None  # nothing shared: the candidates differ from each row's first token
        suffix_width = int((width - split).max())
        # Prefixes right-aligned at column P, suffixes left-aligned at column 0.
        pre_index = split[:, None] - prefix_width + torch.arange(prefix_width, device=ids.device)
        pre_real = pre_index >= start[:, None]
        suf_index = split[:, None] + torch.arange(suffix_width, device=ids.device)
        suf_real = suf_index < width
        pre_index, suf_index = pre_index.clamp(min=0), suf_index.clamp(max=width - 1)
        pad = engine.lm.tokenizer.pad_token_id

        def take(index: torch.Tensor, real: torch.Tensor) -> _Rows:
            return _Rows(ids.gather(1, index).masked_fill(~real, pad), real.long(),
                         slots.gather(1, index).masked_fill(~real, -1))

        prefix = take(pre_index, pre_real)
        embeds = engine.embed(prefix, candidates[0], None)  # prefix positions are equal in every candidate
        out = engine.body(inputs_embeds=embeds, attention_mask=prefix.attention_mask, use_cache=True,
                          position_ids=(prefix.attention_mask.cumsum(-1) - 1).clamp(min=0))
        prefix_lengths = pre_real.sum(1)
        suffix_positions = prefix_lengths[:, None] + torch.arange(suffix_width, device=ids.device)
        return cls(engine, out.cache, prefix.attention_mask, take(suf_index, suf_real), suffix_positions,
                   Queries(queries.rows, queries.positions - split[queries.rows]))

    def logits(self, candidates: torch.Tensor, pack: bool = True) -> torch.Tensor:
        """Query logits (k, Q, V) of k candidates, running only their suffixes."""
        width = self.prefix_mask.shape[1] + len(candidates) * self.suffix.input_ids.shape[1]
        if pack and self.engine.custom_masks_fit(width):
            return self.packed_logits(candidates)
        return self.repeated_logits(candidates, copy.deepcopy(self.cache))

    def packed_logits(self, candidates: torch.Tensor) -> torch.Tensor:
        """The k candidates' suffixes side by side in each row, after one copy of the prefixes' cache. A 4-D
        mask lets a suffix position see its row's prefix and its own candidate's earlier positions only, and
        its position id continues the prefix, so its state is the one its candidate's row alone would give."""
        k, length = candidates.shape[:2]
        suffix, device = self.suffix, candidates.device
        rows, width = suffix.input_ids.shape
        offsets = (torch.arange(k, device=device) * length)[None, :, None]
        slots = suffix.prompt_slots[:, None].expand(-1, k, -1)
        packed = _Rows(suffix.input_ids.repeat(1, k), suffix.attention_mask.repeat(1, k),
                       torch.where(slots >= 0, slots + offsets, slots).reshape(rows, k * width))
        real = suffix.attention_mask.bool()
        own = torch.ones(width, width, dtype=torch.bool, device=device).tril() & real[:, None, :]  # (B, S, S)
        own |= torch.eye(width, dtype=torch.bool, device=device)  # a padding position sees itself: no NaN
        same = torch.eye(k, dtype=torch.bool, device=device)
        among = (same[None, :, None, :, None] & own[:, None, :, None, :]).reshape(rows, k * width, k * width)
        sees_prefix = self.prefix_mask.bool()[:, None, :].expand(-1, k * width, -1)
        dtype = self.engine.lm.model.dtype
        mask = torch.zeros(rows, 1, k * width, self.prefix_mask.shape[1] + k * width, dtype=dtype, device=device)
        mask.masked_fill_(~torch.cat([sees_prefix, among], 2)[:, None], torch.finfo(dtype).min)
        embeds = self.engine.embed(packed, candidates.reshape(k * length, -1), None)
        hidden = self.engine.body(inputs_embeds=embeds, attention_mask=mask, cache=copy.deepcopy(self.cache),
                                  position_ids=self.suffix_positions.repeat(1, k), use_cache=True)[0]
        at = self.queries.positions[None] + torch.arange(k, device=device)[:, None] * width  # (k, Q)
        return self.engine.project(hidden[self.queries.rows[None].expand(k, -1), at])

    def repeated_logits(self, candidates: torch.Tensor, cache: object) -> torch.Tensor:
        """As ``packed_logits``, on k copies of the prefixes' ``cache`` (for models that ignore custom masks),
        which the forward pass extends: a copy of ``self.cache`` unless the prefix is not used again."""
        k, length = candidates.shape[:2]
        rows = _Rows(**repeat_rows(self.suffix, k, length))
        if k > 1:
            cache.batch_repeat_interleave(k)
        embeds = self.engine.embed(rows, candidates.reshape(k * length, -1), None)
        attention = torch.cat([self.prefix_mask.repeat_interleave(k, 0), rows.attention_mask], 1)
        hidden = self.engine.body(inputs_embeds=embeds, attention_mask=attention, cache=cache,
                                  position_ids=self.suffix_positions.repeat_interleave(k, 0), use_cache=True)[0]
        return self.engine.project(candidate_major(hidden, self.queries, k))


class PrefixMemo:
    """The shared prefixes a search has built, most recent last, reused while the batch, its queries, the
    positions where the candidates differ and the prompt vectors before them are the same: what a prefix
    depends on. ``capacity`` bounds the batches kept (a call scores one batch per length group)."""

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self.prefixes: OrderedDict[str, SharedPrefix | None] = OrderedDict()

    @staticmethod
    def key(tokens: Tokens, queries: Queries, candidates: torch.Tensor, differs: torch.Tensor) -> str:
        digest = hashlib.sha256()
        for part in (tokens.input_ids, tokens.attention_mask, tokens.prompt_slots, queries.rows, queries.positions,
                     differs, candidates[0][~differs]):
            digest.update(part.detach().cpu().contiguous().numpy().tobytes())
            digest.update(str(tuple(part.shape)).encode())
        return digest.hexdigest()

    def get(self, engine: Engine, tokens: Tokens, queries: Queries, candidates: torch.Tensor, differs: torch.Tensor
            ) -> SharedPrefix | None:
        key = self.key(tokens, queries, candidates, differs)
        if key in self.prefixes:
            self.prefixes.move_to_end(key)
            return self.prefixes[key]
        self.prefixes[key] = prefix = SharedPrefix.build(engine, tokens, queries, candidates, differs)
        if len(self.prefixes) > self.capacity:
            self.prefixes.popitem(last=False)
        return prefix


def frozen_prefix_logits(engine: Engine, tokens: Tokens, queries: Queries, vectors: torch.Tensor
                         ) -> torch.Tensor | None:
    """Query logits (Q, V), differentiable with respect to the prompt ``vectors`` (L, d), of a causal batch
    whose rows have tokens before their first prompt position (the input of "{input} [P*5]", the subject
    before a template's triggers). Those tokens do not depend on the prompt: they run once without gradients,
    and only the rest of each row keeps activations for the backward pass (PEZ's and AutoPrompt's gradient
    steps). The same logits and gradients as the whole rows, up to float rounding. None where this does not
    apply: not a left-padded causal batch, or no row with a token before its prompt."""
    if engine.lm.kind != "causal" or engine.padding_side != "left":
        return None
    with torch.no_grad():
        every = torch.ones(len(vectors), dtype=torch.bool, device=vectors.device)
        prefix = SharedPrefix.build(engine, tokens, queries, vectors.detach()[None], differs=every)
    return None if prefix is None else prefix.repeated_logits(vectors[None], prefix.cache)[0]  # used once: no copy


# Rows must share at least this many leading tokens, and the positions saved must be at least this share of the
# batch's, for a cached prefix to pay for its extra call and cache copies (benchmarks/instruction_prefix.py: SST-2
# rows saving 32-44% of their positions score 1.5-2.4x faster, AG News saving 14-22% 1.2-1.4x, RTE's long premises
# saving 6-11% no faster).
MIN_SHARED_TOKENS = 8
MIN_SAVED_SHARE = 0.12


@torch.inference_mode()
def common_prefix_logits(engine: Engine, tokens: Tokens, queries: Queries, vectors: torch.Tensor | None = None,
                         deltas: torch.Tensor | None = None, min_shared: int = MIN_SHARED_TOKENS
                         ) -> torch.Tensor | None:
    """Query logits (Q, V) of a batch whose rows begin with the same tokens and prompt vectors (an instruction,
    a hybrid prompt's soft E, before each input, as GPS and ZeroPrompt score them): the common beginning runs
    once, for one row (with ``vectors`` at its prompt positions and, for a deep prompt, ``deltas`` at every
    layer), and every row continues from its key/value cache. None where this does not apply: not a
    left-padded causal batch, a prompt position after the common beginning, fewer than ``min_shared`` positions
    in common, or a common beginning too short a part of the rows to save time."""
    if engine.lm.kind != "causal" or engine.padding_side != "left":
        return None
    ids, mask, slots = tokens.input_ids, tokens.attention_mask, tokens.prompt_slots
    rows, width = ids.shape
    lengths = mask.sum(1)
    start = width - lengths
    column = torch.arange(width, device=ids.device)
    real = column[None] < lengths[:, None]
    index = (start[:, None] + column).clamp(max=width - 1)  # each row's real positions, left-aligned
    aligned = ids.gather(1, index).masked_fill(~real, -1)
    aligned_slots = slots.gather(1, index).masked_fill(~real, -1)
    same = (aligned == aligned[:1]) & (aligned_slots == aligned_slots[:1]) & real
    shared = int(same.long().cumprod(1).sum(1).min())
    relative = queries.positions - start[queries.rows]  # each query's position among its row's real tokens
    shared = min(shared, int(relative.min()))  # a query's own position must run per row
    if shared < min_shared or shared * (rows - 1) < MIN_SAVED_SHARE * int(lengths.sum()) \
            or bool((aligned_slots[:, shared:] >= 0).any()):
        return None
    ones = torch.ones(1, shared, dtype=mask.dtype, device=ids.device)
    prefix = _Rows(aligned[:1, :shared], ones, aligned_slots[:1, :shared])
    with engine.perturb_layers(deltas, prefix.prompt_slots):
        out = engine.body(inputs_embeds=engine.embed(prefix, vectors, deltas), attention_mask=ones, use_cache=True,
                          position_ids=column[None, :shared])
    cache = out.cache
    cache.batch_repeat_interleave(rows)
    suffix_width = int(lengths.max()) - shared
    suffix_real = real[:, shared : shared + suffix_width]
    suffix = aligned[:, shared : shared + suffix_width].masked_fill(~suffix_real, engine.lm.tokenizer.pad_token_id)
    attention = torch.cat([ones.expand(rows, -1), suffix_real.to(mask.dtype)], 1)
    hidden = engine.body(inputs_embeds=engine.lm.embed(suffix), attention_mask=attention, cache=cache, use_cache=True,
                         position_ids=(shared + column[None, :suffix_width]).expand(rows, -1))[0]
    return engine.project(hidden[queries.rows, relative - shared])
