"""The engine: runs a frozen LM with prompt vectors inserted, and projects to the vocabulary only
at the answer position of each query.

Prompt vectors come as a table ``vectors[P, d]`` (plus optional per-layer ``deltas[L+1, P, d]``), and
each token position of a batch says which row it takes (``prompt_slots``, -1 for ordinary tokens).
Positions can be anywhere in the sequence, and one batch can draw on several prompts stacked into one
table (mixtures use this).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import torch
from torch import nn

from softprompt.models import LanguageModel
from softprompt.templates import Example


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    prompt_slots: torch.Tensor  # (B, T), -1 where the token is embedded as a word
    answer_positions: torch.Tensor  # (B,)
    answer_ids: torch.Tensor  # (B,)
    subject_mask: torch.Tensor  # (B, T), True at the subject's tokens

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in vars(self).values()))


class Tokens(Protocol):
    """What the engine reads from any batch: token ids, padding mask, and prompt slots."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_slots: torch.Tensor


# Most sequences in one forward pass: a memory bound (results do not depend on it).
MAX_ROWS = 512
# Facts per inference batch when scoring over the full vocabulary (a memory bound too).
EVAL_BATCH_SIZE = 256
# On a CPU an inference batch is also cut at this many padded token positions: a batch runs fastest while its
# activations fit the caches. SmolLM2 scored SST-2 rows (about 70 tokens with a 20-vector prompt) 2.0-2.2x
# faster under this budget than in batches of 256 (benchmarks/throughput.py --phases eval-batches), and two
# processes side by side then no longer slow each other down. A GPU takes whole batches.
CPU_EVAL_TOKENS = 2048


class TokenRow(Protocol):
    """What padding needs of a row: its token ids and, per token, its prompt slot (-1 for a word)."""

    input_ids: Sequence[int]
    prompt_slots: Sequence[int]


def pad_rows(
    rows: Sequence[TokenRow], pad_id: int, padding_side: Literal["left", "right"]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Token ids, attention mask and prompt slots of ``rows`` padded to one width, ``(B, T)`` each, and where
    each row starts (every batch of the engine, probing's and tasks' alike, is padded here)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    slots = torch.full((len(rows), width), -1, dtype=torch.long)
    starts = []
    for i, r in enumerate(rows):
        start = width - len(r.input_ids) if padding_side == "left" else 0
        ids[i, start : start + len(r.input_ids)] = torch.tensor(r.input_ids)
        mask[i, start : start + len(r.input_ids)] = 1
        slots[i, start : start + len(r.input_ids)] = torch.tensor(r.prompt_slots)
        starts.append(start)
    return ids, mask, slots, starts


def collate(examples: Sequence[Example], pad_id: int, padding_side: Literal["left", "right"]) -> Batch:
    ids, mask, slots, starts = pad_rows(examples, pad_id, padding_side)
    answer_positions = torch.tensor([start + e.answer_position for e, start in zip(examples, starts, strict=True)],
                                    dtype=torch.long)
    subject_mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, (e, start) in enumerate(zip(examples, starts, strict=True)):
        subject_mask[row, start + e.subject_span[0] : start + e.subject_span[1]] = True
    answer_ids = torch.tensor([e.answer_id for e in examples], dtype=torch.long)
    return Batch(ids, mask, slots, answer_positions, answer_ids, subject_mask)


def length_batches(
    examples: Sequence[Sized], batch_size: int, shuffle_seed: int | None = None, max_tokens: int | None = None
) -> list[list[int]]:
    """Index batches of similar length, so little compute goes to padding.

    Without a seed the order is by length (for evaluation), and ``max_tokens`` also caps each batch's padded
    size (its rows times its longest row; a row longer than that is a batch of its own). With a seed,
    examples are shuffled, then sorted by length within windows of 50 batches, and the batches themselves are
    shuffled: training still sees a random order while batches stay nearly free of padding.
    """
    order = list(range(len(examples)))
    if shuffle_seed is None:
        order.sort(key=lambda i: len(examples[i]))
        if max_tokens is None:
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        batches: list[list[int]] = [[]]
        for i in order:  # in increasing length: the row added is the batch's longest
            rows = len(batches[-1])
            if rows and (rows == batch_size or (rows + 1) * len(examples[i]) > max_tokens):
                batches.append([])
            batches[-1].append(i)
        return batches if batches[0] else []
    rng = random.Random(shuffle_seed)
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: len(examples[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# What one more engine call costs beyond its tokens, in token positions: a call runs every layer's kernels
# once however few rows it has, so splitting a batch into many tiny groups would cost more than padding.
CALL_OVERHEAD_TOKENS = 64


def length_groups(lengths: Sequence[int], call_overhead: int = CALL_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split one batch's rows into groups of similar length that cost the least to run.

    A group costs (its rows × its longest length) token positions plus ``call_overhead``. The cheapest split
    of the rows sorted by length is contiguous in that order, so dynamic programming over the distinct
    lengths finds it exactly. Mixtures need this: a fact's K prompts differ in length, and padding every row
    to the longest prompt wasted 25-40% of the training compute of the T-REx mined-prompt mixtures.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    distinct = sorted(set(lengths))
    ends = [bisect.bisect_right(sorted_lengths, length) for length in distinct]  # rows at most that long
    best = [0.0] + [float("inf")] * len(distinct)  # best[j]: cheapest cost of the rows up to distinct[j - 1]
    cut = [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        for i in range(j):  # one group holds the rows longer than distinct[i - 1], up to distinct[j - 1]
            start = ends[i - 1] if i else 0
            cost = best[i] + (ends[j - 1] - start) * distinct[j - 1] + call_overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = len(distinct)
    while j:
        i = cut[j]
        groups.append(order[(ends[i - 1] if i else 0) : ends[j - 1]])
        j = i
    return groups[::-1]


@dataclass(frozen=True)
class TokenTree:
    """Continuations shared by every row of a batch, as a tree of tokens (e.g. the prefixes of candidate
    answers): node i holds ``tokens[i]`` and follows node ``parents[i]``, or the row itself where that is -1.
    A parent comes before its children."""

    tokens: tuple[int, ...]
    parents: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def depths(self) -> list[int]:
        """Each node's distance from its row's last token (1 for a child of the row)."""
        depths: list[int] = []
        for parent in self.parents:
            depths.append(1 if parent < 0 else depths[parent] + 1)
        return depths

    def ancestry(self) -> torch.Tensor:
        """(N, N) booleans: [i, j] is True where node j is node i or one of its ancestors."""
        seen = torch.eye(len(self), dtype=torch.bool)
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                seen[node] |= seen[parent]
        return seen


class Seq2SeqTokens(Tokens, Protocol):
    decoder_ids: torch.Tensor
    decoder_mask: torch.Tensor


class Engine:
    """Answer-position scores of a frozen LM under prompts."""

    def __init__(self, lm: LanguageModel, padding_side: Literal["left", "right"] | None = None) -> None:
        self.lm = lm
        # Causal LMs are padded on the left so the answer is read at the same last position everywhere.
        self.padding_side = padding_side or ("left" if lm.kind == "causal" else "right")
        self._tree_masks_honoured: bool | None = None
        if lm.kind == "masked" and self.padding_side == "left":
            # Masked LMs take default absolute positions from 0, which left padding would shift.
            raise ValueError("masked LMs must be padded on the right")
        model = lm.model
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        if lm.kind == "seq2seq":
            return  # encoder-decoders are run whole (seq2seq_logits): their decoders are short
        self.body = getattr(model, model.base_model_prefix)
        self.head = self._find_head(model)

    def _find_head(self, model: nn.Module) -> nn.Module:
        if self.lm.kind == "causal":
            return model.get_output_embeddings()
        heads = [m for name, m in model.named_children() if name != model.base_model_prefix]
        if len(heads) != 1:
            raise ValueError(f"cannot identify the masked-LM head of {type(model).__name__}")
        return heads[0]

    def eval_batches(self, examples: Sequence[Sized], batch_size: int) -> list[list[int]]:
        """Inference batches of similar length: at most ``batch_size`` rows and, on a CPU, ``CPU_EVAL_TOKENS``
        padded positions (results do not depend on the batches, beyond float rounding)."""
        budget = CPU_EVAL_TOKENS if self.lm.device.type == "cpu" else None
        return length_batches(examples, batch_size, max_tokens=budget)

    def collate(self, examples: Sequence[Example]) -> Batch:
        batch = collate(examples, self.lm.tokenizer.pad_token_id, self.padding_side)
        return batch.to(self.lm.device) if self.lm.device.type != "cpu" else batch

    def embed(self, batch: Tokens, vectors: torch.Tensor | None, deltas: torch.Tensor | None) -> torch.Tensor:
        """Input embeddings with prompt vectors (and their layer-0 perturbation) at the prompt slots."""
        is_prompt = (batch.prompt_slots >= 0).unsqueeze(-1)
        rows = batch.prompt_slots.clamp(min=0)
        embeds = self.lm.embed(batch.input_ids)
        if vectors is not None:
            embeds = torch.where(is_prompt, vectors[rows].to(embeds.dtype), embeds)
        if deltas is not None:
            embeds = embeds + deltas[0][rows] * is_prompt
        return embeds

    def final_hidden(
        self, batch: Tokens, vectors: torch.Tensor | None = None, deltas: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The last layer's hidden states at every position, (B, T, d)."""
        kwargs = {}
        if self.lm.kind == "causal":
            # With left padding the default arange positions would be shifted by the padding.
            kwargs["position_ids"] = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            kwargs["use_cache"] = False
        return self._run_body(batch, batch.attention_mask, vectors, deltas, **kwargs)

    def _run_body(self, tokens: Tokens, attention_mask: torch.Tensor, vectors: torch.Tensor | None,
                  deltas: torch.Tensor | None, **kwargs: object) -> torch.Tensor:
        """The body's last hidden states for ``tokens`` under an attention mask (2-D padding or 4-D custom)."""
        embeds = self.embed(tokens, vectors, deltas)
        with self.perturb_layers(deltas, tokens.prompt_slots):
            return self.body(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)[0]

    def tree_hidden(
        self, batch: Batch, tree: TokenTree, vectors: torch.Tensor | None = None, deltas: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden states at each row's answer position and at every node of ``tree`` continuing that row,
        (B, 1 + N, d), from one forward pass of a causal LM.

        The tree's tokens are appended after every (left-padded) row. A custom 4-D attention mask lets each
        node see its row's real tokens, its ancestors and itself, and its position id is the row's last
        position plus its depth, so node i's state is exactly the one the row extended by the path to node
        i would give: several continuations of one prompt cost their distinct tokens, not their number
        times the prompt.
        """
        if self.lm.kind != "causal" or self.padding_side != "left":
            raise ValueError("token trees continue the rows of a causal LM padded on the left")
        rows, width = batch.input_ids.shape
        device = batch.input_ids.device
        nodes = torch.tensor(tree.tokens, dtype=torch.long, device=device).expand(rows, -1)
        tokens = replace(batch, input_ids=torch.cat([batch.input_ids, nodes], 1),
                         prompt_slots=torch.cat([batch.prompt_slots, torch.full_like(nodes, -1)], 1))
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        depths = torch.tensor(tree.depths, dtype=torch.long, device=device)
        position_ids = torch.cat([positions, positions[:, -1:] + depths], 1)
        real = batch.attention_mask.bool()[:, None, :]
        size = width + len(tree.tokens)
        allowed = torch.zeros(rows, size, size, dtype=torch.bool, device=device)
        allowed[:, :width, :width] = torch.ones(width, width, dtype=torch.bool, device=device).tril() & real
        allowed[:, width:, :width] = real
        allowed[:, width:, width:] = tree.ancestry().to(device)
        # A padding position sees itself only: a query that sees nothing would turn the softmax into NaN.
        allowed[:, range(width), range(width)] = True
        dtype = self.lm.model.dtype
        mask = torch.zeros(rows, 1, size, size, dtype=dtype, device=device)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        hidden = self._run_body(tokens, mask, vectors, deltas, position_ids=position_ids, use_cache=False)
        return hidden[:, width - 1 :]  # the answer position (each row's last token), then the nodes

    @torch.inference_mode()
    def honours_tree_masks(self) -> bool:
        """Whether the model applies ``tree_hidden``'s custom 4-D attention mask (checked once, on a two-token
        row and a three-node tree against the rows extended by each path). Some attention implementations
        (e.g. flash attention) ignore such masks: the tree's scores would then be wrong without any error."""
        if self._tree_masks_honoured is None:
            ids = [i for i in range(self.lm.vocab_size) if i not in set(self.lm.tokenizer.all_special_ids)][:5]
            tree = TokenTree((ids[2], ids[3], ids[4]), (-1, -1, 1))
            row = Example(tuple(ids[:2]), (-1, -1), 1, -1)
            got = self.tree_hidden(self.collate([row]), tree)[0, 1:]
            paths = [(ids[2],), (ids[3],), (ids[3], ids[4])]
            whole = [self.final_hidden(self.collate([Example((*ids[:2], *p), (-1,) * (2 + len(p)), 0, -1)]))[0, -1]
                     for p in paths]
            self._tree_masks_honoured = bool(torch.allclose(got, torch.stack(whole), atol=1e-3, rtol=1e-3))
        return self._tree_masks_honoured

    def custom_masks_fit(self, width: int) -> bool:
        """Whether a forward pass over ``width`` key positions under a custom 4-D mask gives exact states: the
        model honours such masks, and ``width`` is within its sliding attention window if it has one (sliding
        layers take a custom mask as it is, and their caches keep only the window)."""
        window = getattr(self.lm.model.config, "sliding_window", None)
        return (window is None or width < window) and self.honours_tree_masks()

    def seq2seq_logits(
        self, batch: Seq2SeqTokens, vectors: torch.Tensor | None = None, deltas: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decoder logits of an encoder-decoder, (B, T_dec, V); prompts sit in the encoder's input and deep
        perturbations in the encoder's layers."""
        embeds = self.embed(batch, vectors, deltas)
        with self.perturb_layers(deltas, batch.prompt_slots):
            out = self.lm.model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                decoder_input_ids=batch.decoder_ids, decoder_attention_mask=batch.decoder_mask,
                                use_cache=False)
        return out.logits.float()

    def answer_hidden(
        self, batch: Batch, vectors: torch.Tensor | None = None, deltas: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The final hidden state at each query's answer position, (B, d)."""
        return self.at_answers(self.final_hidden(batch, vectors, deltas), batch)

    @staticmethod
    def at_answers(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The rows of (B, T, d) ``hidden`` at each query's answer position, (B, d)."""
        return hidden[torch.arange(len(batch), device=hidden.device), batch.answer_positions]

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of the given hidden states, (..., V)."""
        logits = self.head(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()

    def answer_logits(
        self, batch: Batch, vectors: torch.Tensor | None = None, deltas: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Vocabulary logits at each query's answer position only, (B, V)."""
        return self.project(self.answer_hidden(batch, vectors, deltas))

    def subject_logprob(
        self, batch: Batch, vectors: torch.Tensor | None = None, deltas: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p(subject | prompt) per query, (B,): how plausible the subject is in the prompt's context.

        Causal LMs: the log-probability of the subject's tokens after its first one, read from the same
        forward pass as the answer (``hidden``, if given). The first token is left out for every prompt
        because a template that opens with [X] gives it no left context to be predicted from.
        Masked LMs: all subject tokens (and the answer) are masked at once and the subject's tokens are
        scored in one extra forward pass.
        """
        if self.lm.kind == "causal":
            hidden = self.final_hidden(batch, vectors, deltas) if hidden is None else hidden
            # Token p is predicted from position p - 1; score subject tokens whose predecessor is subject too.
            scored = batch.subject_mask[:, 1:] & batch.subject_mask[:, :-1]
            rows, cols = scored.nonzero(as_tuple=True)
            logp = self.project(hidden[rows, cols]).log_softmax(-1)
            targets = batch.input_ids[rows, cols + 1]
        else:
            masked = batch.input_ids.masked_fill(batch.subject_mask, self.lm.tokenizer.mask_token_id)
            hidden = self.final_hidden(replace(batch, input_ids=masked), vectors, deltas)
            rows, cols = batch.subject_mask.nonzero(as_tuple=True)
            logp = self.project(hidden[rows, cols]).log_softmax(-1)
            targets = batch.input_ids[rows, cols]
        token_logp = logp.gather(1, targets[:, None])[:, 0]
        return torch.zeros(len(batch), device=token_logp.device).index_add(0, rows, token_logp)

    @contextmanager
    def perturb_layers(self, deltas: torch.Tensor | None, prompt_slots: torch.Tensor) -> Iterator[None]:
        if deltas is None:
            yield
            return
        is_prompt = (prompt_slots >= 0).unsqueeze(-1)
        rows = prompt_slots.clamp(min=0)
        handles = []
        for index, layer in enumerate(self.lm.layers, start=1):
            def add(_module: nn.Module, _inputs: object, output: object, delta: torch.Tensor = deltas[index]):
                hidden = output[0] if isinstance(output, tuple) else output
                if hidden.shape[1] != rows.shape[1]:
                    return output  # a cached decoding step: the prompt positions were perturbed at prefill
                hidden = hidden + delta[rows] * is_prompt
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            handles.append(layer.register_forward_hook(add))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
