"""Scoring a task's answer choices under task prompts.

Every choice gets log p(choice | prompt, input) from the frozen LM:

- *shared single-token* verbalizers (each label word is one token): one row per example, and only the
  answer position is projected to the vocabulary; the verbalizers' log-probabilities are read off it;
- multi-token verbalizers and multiple-choice continuations: one row per (example, choice) with the
  choice appended (causal), as mask tokens (masked LMs: each mask scored independently) or as the
  decoder's input (encoder-decoders); only the positions that predict choice tokens are projected.

Scores are summed log-likelihoods; ``normalise=True`` divides by each choice's token count.
A batch may hold examples under different prompts: their vectors are stacked into one table and each
example's prompt positions point at its own rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from softprompt.engine import Engine, pad_rows
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.progress import progress_bar
from softprompt.prompt_scorer import Queries, common_prefix_logits, frozen_prefix_logits
from softprompt.prompts.task import FIELDS, TaskPrompt, split_markers
from softprompt.tasks.task import Task, TaskExample

# Rows per batch when scoring choices (each row may hold a long task input).
CHOICE_BATCH_SIZE = 32


@dataclass(frozen=True)
class Row:
    """One LM input: which positions are prompt vectors, and which outputs are read."""

    input_ids: tuple[int, ...]
    prompt_slots: tuple[int, ...]
    query_positions: tuple[int, ...]  # in the decoder for encoder-decoders
    target_ids: tuple[int, ...]  # what each query position should produce; empty for shared verbalizers
    decoder_ids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids) + len(self.decoder_ids)


@dataclass
class Encoded:
    """Examples encoded for one model: rows are example-major (all choices of example 0 first)."""

    rows: list[Row]
    num_examples: int
    num_choices: int
    shared_ids: tuple[int, ...] | None  # the verbalizer token ids when one row serves all choices
    choice_lengths: torch.Tensor  # (N, C) tokens per choice
    labels: torch.Tensor  # (N,)

    @staticmethod
    def concat(parts: Sequence[Encoded]) -> Encoded:
        shared = {p.shared_ids for p in parts}
        if len(shared) > 1 or len({p.num_choices for p in parts}) > 1:
            raise SoftpromptError("examples in one batch must share the task's choices")
        return Encoded([r for p in parts for r in p.rows], sum(p.num_examples for p in parts), parts[0].num_choices,
                       parts[0].shared_ids, torch.cat([p.choice_lengths for p in parts]),
                       torch.cat([p.labels for p in parts]))


class TaskEncoder:
    """Encodes a task's examples for one model under one prompt layout."""

    def __init__(self, lm: LanguageModel, task: Task, prompt: TaskPrompt | None = None) -> None:
        self.lm, self.task = lm, task
        self.layout = prompt.layout if prompt is not None else "{input}"
        self.length = prompt.length if prompt is not None else 0
        self.prefix, self.suffix = lm.special_affixes
        if lm.kind == "causal":
            self.suffix = []  # the answer follows the input directly
        self.verbalizer_ids = None
        if task.verbalizers is not None:
            ids = [self._tokens(task.target_delimiter + v) for v in task.verbalizers]
            if all(len(i) == 1 for i in ids):
                if len({i[0] for i in ids}) < len(ids):
                    raise SoftpromptError(f"task {task.name!r}: two verbalizers share a token for model {lm.name!r}")
                self.verbalizer_ids = tuple(i[0] for i in ids)

    def _tokens(self, text: str) -> list[int]:
        return self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def context(self, example: TaskExample) -> tuple[list[int], list[int]]:
        """Token ids of prompt + input, and each position's prompt vector (-1 for words)."""
        fields = {"input": example.text, "description": self.task.description, "options": ", ".join(example.choices)}
        try:
            return layout_tokens(self.lm, self.layout, fields, self.length, self.prefix)
        except SoftpromptError as err:
            raise SoftpromptError(f"task {self.task.name!r}: {err}") from err

    def encode(self, examples: Sequence[TaskExample], slot_offset: int = 0) -> Encoded:
        if not examples:
            raise SoftpromptError(f"task {self.task.name!r}: no examples to score")
        kind = self.lm.kind
        mask_id = self.lm.tokenizer.mask_token_id
        rows: list[Row] = []
        lengths = []
        for number, e in enumerate(examples, start=1):
            ids, slots = self.context(e)
            self.lm.check_length(len(ids), f"task {self.task.name!r}: input {number} ({e.text[:40]!r}...)")
            slots = [s + slot_offset if s >= 0 else -1 for s in slots]
            if self.verbalizer_ids is not None:
                lengths.append([1] * len(e.choices))
                if kind == "causal":
                    rows.append(Row(tuple(ids), tuple(slots), (len(ids) - 1,), ()))
                elif kind == "masked":
                    rows.append(Row((*ids, mask_id, *self.suffix), (*slots, -1, *[-1] * len(self.suffix)),
                                    (len(ids),), ()))
                else:
                    rows.append(Row((*ids, *self.suffix), (*slots, *[-1] * len(self.suffix)), (0,), (),
                                    (self._decoder_start(),)))
                continue
            choice_lengths = []
            for choice in e.choices:
                target = self._tokens(self.task.target_delimiter + choice)
                if not target:
                    raise SoftpromptError(f"task {self.task.name!r}: a choice tokenises to nothing: {choice!r}")
                choice_lengths.append(len(target))
                if kind == "causal":
                    start = len(ids) - 1
                    rows.append(Row((*ids, *target), (*slots, *[-1] * len(target)),
                                    tuple(range(start, start + len(target))), tuple(target)))
                elif kind == "masked":
                    n = len(target)
                    rows.append(Row((*ids, *[mask_id] * n, *self.suffix), (*slots, *[-1] * (n + len(self.suffix))),
                                    tuple(range(len(ids), len(ids) + n)), tuple(target)))
                else:
                    rows.append(Row((*ids, *self.suffix), (*slots, *[-1] * len(self.suffix)),
                                    tuple(range(len(target))), tuple(target),
                                    (self._decoder_start(), *target[:-1])))
            lengths.append(choice_lengths)
        num_choices = len(examples[0].choices)
        if any(len(e.choices) != num_choices for e in examples):
            raise SoftpromptError(f"task {self.task.name!r}: examples have different numbers of choices")
        return Encoded(rows, len(examples), num_choices, self.verbalizer_ids,
                       torch.tensor(lengths, dtype=torch.float32), torch.tensor([e.label for e in examples]))

    def _decoder_start(self) -> int:
        start = self.lm.config.decoder_start_token_id
        if start is None:
            raise SoftpromptError(f"model {self.lm.name!r} has no decoder_start_token_id")
        return start


def layout_tokens(lm: LanguageModel, layout: str, fields: dict[str, str], length: int,
                  prefix: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """Token ids of a layout filled with ``fields`` and each position's prompt vector (-1 for words).

    Text between prompt vectors is tokenised as one piece, so words never merge across a prompt vector. A leading soft
    prompt goes before the tokenizer's start tokens (``prefix``), as PEFT prepends it.
    """
    pieces: list[str | int] = []
    for i, part in enumerate(FIELDS.split(layout)):
        # FIELDS.split alternates literal text and field names.
        pieces += split_markers(fields[part]) if i % 2 else split_markers(part)
    merged: list[str | int] = []  # adjacent text is tokenised as one, as a tokenizer would see it
    for piece in pieces:
        if merged and isinstance(piece, str) and isinstance(merged[-1], str):
            merged[-1] += piece
        elif piece != "":
            merged.append(piece)
    pieces = merged
    lead = pieces.pop(0) if pieces and isinstance(pieces[0], int) else 0
    pad = lm.tokenizer.pad_token_id
    ids = [pad] * lead + list(prefix)
    slots = list(range(lead)) + [-1] * len(prefix)
    vector = lead
    for piece in pieces:
        if isinstance(piece, int):
            ids += [pad] * piece
            slots += list(range(vector, vector + piece))
            vector += piece
        else:
            tokens = lm.tokenizer(piece, add_special_tokens=False)["input_ids"]
            ids += tokens
            slots += [-1] * len(tokens)
    if vector != length:
        raise SoftpromptError(f"an input has {vector} [P] positions but the prompt has {length} vectors (does the "
                              f"text itself contain '[P]'?): {fields['input'][:80]!r}")
    return ids, slots


@dataclass
class RowBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_slots: torch.Tensor
    query_rows: torch.Tensor  # flattened (row, position) of every query
    query_positions: torch.Tensor
    target_ids: torch.Tensor  # aligned with the queries (empty for shared verbalizers)
    decoder_ids: torch.Tensor | None
    decoder_mask: torch.Tensor | None

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate_rows(rows: Sequence[Row], pad_id: int, left: bool, device: torch.device) -> RowBatch:
    ids, mask, slots, starts = pad_rows(rows, pad_id, "left" if left else "right")
    q_rows, q_pos, targets = [], [], []
    for i, (r, start) in enumerate(zip(rows, starts, strict=True)):
        shift = 0 if r.decoder_ids else start
        q_rows += [i] * len(r.query_positions)
        q_pos += [p + shift for p in r.query_positions]
        targets += r.target_ids
    dec = dec_mask = None
    if rows[0].decoder_ids:
        dwidth = max(len(r.decoder_ids) for r in rows)
        dec = torch.full((len(rows), dwidth), pad_id, dtype=torch.long)
        dec_mask = torch.zeros((len(rows), dwidth), dtype=torch.long)
        for i, r in enumerate(rows):
            dec[i, : len(r.decoder_ids)] = torch.tensor(r.decoder_ids)
            dec_mask[i, : len(r.decoder_ids)] = 1
        dec, dec_mask = dec.to(device), dec_mask.to(device)
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return RowBatch(ids.to(device), mask.to(device), slots.to(device), as_long(q_rows), as_long(q_pos),
                    as_long(targets), dec, dec_mask)


def query_logits(engine: Engine, batch: RowBatch, vectors: torch.Tensor | None, deltas: torch.Tensor | None
                 ) -> torch.Tensor:
    """Vocabulary logits at the query positions only, (Q, V). Without gradients, rows that begin alike (an
    instruction, a prompt before the input) run their common beginning once; with them, the tokens before a
    (shallow) prompt run without gradients."""
    if batch.decoder_ids is not None:
        logits = engine.seq2seq_logits(batch, vectors, deltas)
        return logits[batch.query_rows, batch.query_positions]
    queries = Queries(batch.query_rows, batch.query_positions)
    if not torch.is_grad_enabled():
        shared = common_prefix_logits(engine, batch, queries, vectors, deltas)
        if shared is not None:
            return shared
    elif vectors is not None and deltas is None:
        frozen = frozen_prefix_logits(engine, batch, queries, vectors)
        if frozen is not None:
            return frozen
    hidden = engine.final_hidden(batch, vectors, deltas)
    return engine.project(hidden[batch.query_rows, batch.query_positions])


def row_scores(engine: Engine, encoded: Encoded, indices: Sequence[int], vectors: torch.Tensor | None,
               deltas: torch.Tensor | None) -> torch.Tensor:
    """log p(choice) for the rows ``indices``: (len, C) for shared verbalizers, else (len,)."""
    batch = collate_rows([encoded.rows[i] for i in indices], engine.lm.tokenizer.pad_token_id,
                         engine.padding_side == "left", engine.lm.device)
    return scores_from_logits(encoded, batch, query_logits(engine, batch, vectors, deltas))


def scores_from_logits(encoded: Encoded, batch: RowBatch, logits: torch.Tensor) -> torch.Tensor:
    """``row_scores`` from a batch's query logits (Q, V), for callers that need the logits too."""
    logp = logits.log_softmax(-1)
    if encoded.shared_ids is not None:
        return logp[:, list(encoded.shared_ids)]
    token_logp = logp.gather(1, batch.target_ids[:, None])[:, 0]
    return torch.zeros(len(batch), device=logp.device).index_add(0, batch.query_rows, token_logp)


def choice_scores(engine: Engine, encoded: Encoded, vectors: torch.Tensor | None = None,
                  deltas: torch.Tensor | None = None, batch_size: int = CHOICE_BATCH_SIZE) -> torch.Tensor:
    """Summed log-likelihood of every choice, (N, C), without gradients."""
    out = torch.empty(len(encoded.rows), *(() if encoded.shared_ids is None else (encoded.num_choices,)))
    with torch.inference_mode():
        for idx in progress_bar(engine.eval_batches(encoded.rows, batch_size), "scoring"):
            out[idx] = row_scores(engine, encoded, idx, vectors, deltas).float().cpu()
    return out.view(encoded.num_examples, encoded.num_choices)


def example_sizes(encoded: Encoded) -> list[range]:
    """Each example as a sized item (its rows' total token count): what length batching and samplers need."""
    return [range(sum(len(encoded.rows[r]) for r in example_rows(encoded, [i]))) for i in range(encoded.num_examples)]


def example_rows(encoded: Encoded, examples: Sequence[int]) -> list[int]:
    """Row indices of the given examples (one row each, or one per choice)."""
    per = 1 if encoded.shared_ids is not None else encoded.num_choices
    return [e * per + c for e in examples for c in range(per)]


def choice_loss(scores: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the choices (scores length-normalised when ``lengths`` is given)."""
    if lengths is not None:
        scores = scores / lengths.to(scores.device)
    return F.cross_entropy(scores, labels.to(scores.device))


def calibrate(scores: torch.Tensor, content_free: torch.Tensor) -> torch.Tensor:
    """Contextual calibration (Zhao et al. 2021): choice log-probabilities, normalised over the choices,
    minus those the prompt gives a content-free input; the argmax is the calibrated prediction."""
    return scores.log_softmax(-1) - content_free.reshape(1, -1).log_softmax(-1)

