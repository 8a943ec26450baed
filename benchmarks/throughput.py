"""Soft-prompt training and evaluation throughput: softprompt vs a plain Hugging Face loop and vs PEFT.

    .venv/bin/python benchmarks/throughput.py [--phases lama peft] [--model smollm2-135m] [--train-batches 8]
        [--eval-examples 512] [--repeats 3] [--threads N] [--device cpu|cuda] [--write [--note TEXT]]
    .venv/bin/python benchmarks/throughput.py --phases scaling [--scaling-processes 1 2] [--scaling-repeats 2]
    .venv/bin/python benchmarks/throughput.py --phases eval-batches [--eval-examples 512] [--repeats 3]

One run, one model, the same examples and batch size (64) for the methods compared in each phase.

Phase ``lama``, softprompt's engine vs a plain Hugging Face loop on LAMA facts:

1. Training examples/s of a soft prompt. "engine" is the step of ``softprompt.probing.train_prompt``
   (length-bucketed batches, left padding, ``Engine.answer_logits`` -> cross-entropy -> backward ->
   Adam on the prompt vectors). "plain HF" is written here: the same prompt vectors put into
   ``inputs_embeds`` at the template positions, batches in dataset order padded to the batch maximum
   on the right, the full ``lm.model(inputs_embeds=..., attention_mask=...)`` with logits for every
   position (B, T, V), the logits gathered at each answer position, same loss, same Adam step.
   Before timing, both are checked to give the same loss and prompt gradient on the same batch.
2. Evaluation examples/s (inference_mode, rank of the answer over the full vocabulary, as
   ``softprompt.probing.predict`` does): engine (bucketed) vs plain HF (unbucketed, full logits).

Phase ``peft``, prefix prompt tuning (20 vectors in front of the input, as Lester et al.) on SST-2:
training examples/s of softprompt's task prompts vs PEFT's ``PromptTuningConfig``, from the same initial
vectors. "softprompt" is the step of ``softprompt.tasks.fit`` (``ChoiceObjective.backward``: length-bucketed
batches, left padding, the vocabulary projection at the answer position only, cross-entropy over the two
verbalizers' log-probabilities, backward, Adam). "PEFT" is the loop a PEFT user writes: ``get_peft_model``
on the frozen model, tokenizer-padded batches in dataset order, ``model(input_ids=..., attention_mask=...)``
with logits for every position (B, 20 + T, V), the same loss read at each row's last real token, the same
Adam step. Before timing, both are checked to give the same loss and prompt gradient on the same batch.

Phase ``scaling``, data parallelism: ``softprompt task train sst2`` (prefix prompt, the command a user runs) as
one process with one thread, one process with every thread, and N processes (torchrun; ``--scaling-processes``)
sharing the threads, each configuration --scaling-repeats times in alternating order. Training examples/s are
epochs x training examples / the run's ``train_seconds`` (dev losses included), evaluation examples/s are
evaluated examples / ``eval_seconds``; the table also shows each configuration's test accuracy and how far its
prompt is from the one-process prompt (they must agree up to floating point). On --device cuda each process
takes one GPU. It prints a markdown table (kept in docs/results/throughput.md by hand, like the other sections
that come from other scripts); --write does not touch it.

Phase ``eval-batches``, evaluation batches on the CPU: SST-2 scoring under a 20-vector prefix prompt
(``softprompt.tasks.run.predict``, --eval-examples of the validation split, a stratified sample) in length-sorted
batches of at most 256 rows (``length_batches`` as it was) vs the same batches also cut at
``engine.CPU_EVAL_TOKENS`` padded positions (``Engine.eval_batches``), in alternating order, --repeats times each,
with one thread and with every thread; the scores must agree up to float rounding. Also standalone, printing a
markdown table.

For every method, achieved FLOP/s are counted analytically (see ``FlopModel``) against a dense fp32 matmul
peak measured in the same run.

LAMA data: T-REx P19 from ../shared/data when present, else the geo relation city_country; SST-2 is read
from ../shared/data (the peft phase needs it). Each timing is the median of --repeats passes after a
warm-up; within a pass the methods run batch by batch in alternating order, so that load from other
processes hits both alike. The defaults take about 3 minutes for the lama phase on 2 CPU cores. On a
machine busy with other work, --threads 1 gives far steadier timings (OpenMP threads that wait on each
other suffer badly from a competing process). With --write the tables also go to
docs/results/throughput.md (--note adds a remark on the conditions of the run).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

from softprompt.engine import CPU_EVAL_TOKENS, Batch, Engine, collate, length_batches
from softprompt.errors import SoftpromptError
from softprompt.metrics import answer_ranks
from softprompt.models import LanguageModel, load_model
from softprompt.paths import shared_data_dir
from softprompt.probing import geo_relation, load_relation, train_step
from softprompt.probing.probe import encode_relation
from softprompt.prompts import SoftPrompt, load_prompt
from softprompt.prompts.task import TaskPrompt
from softprompt.tasks import TaskEncoder, load_task
from softprompt.tasks.objective import ChoiceObjective
from softprompt.tasks.run import TaskSettings, predict
from softprompt.tasks.sampling import stratified_sample
from softprompt.tasks.task import Task, TaskExample
from softprompt.templates import Example

# The staged datasets beside this checkout, unless $SOFTPROMPT_SHARED_DATA says otherwise.
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED = shared_data_dir(default=SHARED_DEFAULT)

ROOT = Path(__file__).resolve().parent.parent
TOP_K = 10
LR = 3e-3
PHASES = ("lama", "peft", "scaling", "eval-batches")
METHODS = {"engine": "softprompt engine (bucketed)", "hf": "plain HF (unbucketed, full logits)"}
PEFT_METHODS = {"softprompt": "softprompt TaskPrompt (bucketed)",
                "peft": "PEFT PromptTuningConfig (unbucketed, full logits)"}
PREFIX_LENGTH = 20
CHECK_EXAMPLES = 16
# softprompt and PEFT must agree this closely (relative to the loss, and to the largest gradient entry).
CHECK_TOLERANCE = 1e-4


# --------------------------------------------------------------------------- the two implementations


def engine_train_step(engine: Engine, prompt: SoftPrompt, optimizer: torch.optim.Optimizer,
                      examples: Sequence[Example], device: torch.device) -> float:
    """``train_prompt``'s step on one batch, moved to ``device``."""
    return train_step(engine, prompt, optimizer, engine.collate(examples).to(device))


def engine_eval_batch(engine: Engine, prompt: SoftPrompt, examples: Sequence[Example], idx: list[int],
                      ranks: torch.Tensor, device: torch.device) -> None:
    """The body of ``softprompt.probing.predict``'s batch loop (plus the move to ``device``)."""
    with torch.inference_mode():
        batch = engine.collate([examples[i] for i in idx]).to(device)
        logprobs = engine.answer_logits(batch, prompt.vectors(), prompt.deltas()).log_softmax(-1)
        ranks[torch.tensor(idx)] = answer_ranks(logprobs, batch.answer_ids).cpu()
        logprobs.gather(1, batch.answer_ids[:, None]).cpu()
        logprobs.topk(TOP_K, dim=-1).values.cpu()


class PlainHF:
    """A straightforward soft-prompt implementation on the Hugging Face model API.

    Right padding to the batch maximum, no length bucketing, the model's full forward pass with
    logits at every position, and the answer's logits gathered at each row's explicit answer position
    (for a causal LM, the last real token).
    """

    def __init__(self, lm: LanguageModel, device: torch.device) -> None:
        self.lm = lm
        self.device = device
        self.pad_id = lm.tokenizer.pad_token_id

    def collate(self, examples: Sequence[Example]) -> Batch:
        """Right padding in dataset order, as a plain loop over a DataLoader would batch."""
        batch = collate(examples, self.pad_id, "right")
        if self.lm.kind == "causal":
            last = batch.attention_mask.sum(1) - 1
            assert torch.equal(batch.answer_positions, last), "causal answers are read at the last real token"
        return batch.to(self.device)

    def answer_logits(self, batch: Batch, vectors: torch.Tensor) -> torch.Tensor:
        model = self.lm.model
        embeds = model.get_input_embeddings()(batch.input_ids)
        is_prompt = (batch.prompt_slots >= 0).unsqueeze(-1)
        embeds = torch.where(is_prompt, vectors[batch.prompt_slots.clamp(min=0)], embeds)
        logits = model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits  # (B, T, V)
        return logits[torch.arange(len(batch), device=logits.device), batch.answer_positions].float()

    def train_step(self, prompt: SoftPrompt, optimizer: torch.optim.Optimizer,
                   examples: Sequence[Example]) -> float:
        batch = self.collate(examples)
        loss = F.cross_entropy(self.answer_logits(batch, prompt.vectors()), batch.answer_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    def eval_batch(self, prompt: SoftPrompt, examples: Sequence[Example], idx: list[int],
                   ranks: torch.Tensor) -> None:
        with torch.inference_mode():
            batch = self.collate([examples[i] for i in idx])
            logprobs = self.answer_logits(batch, prompt.vectors()).log_softmax(-1)
            ranks[torch.tensor(idx)] = answer_ranks(logprobs, batch.answer_ids).cpu()
            logprobs.gather(1, batch.answer_ids[:, None]).cpu()
            logprobs.topk(TOP_K, dim=-1).values.cpu()


def check_same_computation(engine: Engine, hf: PlainHF, init: torch.Tensor, examples: Sequence[Example],
                           device: torch.device) -> tuple[float, float]:
    """Loss, logits and prompt gradient of both on one mixed-length batch must agree.

    Returns the loss and the largest gradient difference relative to the largest gradient entry.
    """
    results = []
    for method in ("engine", "hf"):
        vectors = init.detach().clone().requires_grad_(True)
        if method == "engine":
            batch = engine.collate(examples).to(device)
            logits = engine.answer_logits(batch, vectors)
        else:
            batch = hf.collate(examples)
            logits = hf.answer_logits(batch, vectors)
        loss = F.cross_entropy(logits, batch.answer_ids)
        loss.backward()
        results.append((loss.detach(), logits.detach(), vectors.grad))
    (loss_e, logits_e, grad_e), (loss_h, logits_h, grad_h) = results
    torch.testing.assert_close(loss_e, loss_h, rtol=1e-4, atol=1e-4)
    # Padding changes the order of multi-threaded fp32 reductions: logits of size ~10 differ by ~1e-3 and
    # gradients by ~1e-4 of their largest entry across batch shapes (a wrong computation differs by O(1)).
    torch.testing.assert_close(logits_e, logits_h, rtol=1e-3, atol=5e-3)
    torch.testing.assert_close(grad_e, grad_h, rtol=1e-3, atol=1e-3 * float(grad_e.abs().max()))
    return float(loss_e), float((grad_e - grad_h).abs().max() / grad_e.abs().max())


def softprompt_task_step(objective: ChoiceObjective, optimizer: torch.optim.Optimizer, idx: list[int]) -> float:
    """The body of ``GradientDescent.fit``'s batch loop, which ``softprompt.tasks.fit`` runs."""
    optimizer.zero_grad(set_to_none=True)
    loss = objective.backward(idx)
    optimizer.step()
    return loss


class PeftPrefix:
    """Prefix prompt tuning as a PEFT user writes it: ``get_peft_model`` with a ``PromptTuningConfig``.

    PEFT prepends the virtual tokens' embeddings to the embedded input and runs the whole causal LM, so
    logits come for every position, virtual tokens included (B, n + T, V). It wraps a copy of the model,
    because ``get_peft_model`` freezes and wraps the model it is given in place, and the engine's must stay
    as it is.
    """

    def __init__(self, lm: LanguageModel, task: Task, init: torch.Tensor) -> None:
        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=len(init),
                                    prompt_tuning_init=PromptTuningInit.RANDOM)
        with warnings.catch_warnings():
            # PEFT reads transformers' deprecated is_gradient_checkpointing: noise in the benchmark's output.
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            self.model = get_peft_model(copy.deepcopy(lm.model), config)
        with torch.no_grad():
            self.weight.copy_(init)
        self.tokenizer = lm.tokenizer
        self.device = lm.device
        ids = [self.tokenizer(task.target_delimiter + v, add_special_tokens=False)["input_ids"]
               for v in task.verbalizers or []]
        assert ids and all(len(i) == 1 for i in ids), "the verbalizers must be single tokens"
        self.verbalizer_ids = torch.tensor([i[0] for i in ids], device=self.device)

    @property
    def weight(self) -> torch.nn.Parameter:
        """The trainable prompt: PEFT's embedding of the virtual tokens, (n, d)."""
        return self.model.prompt_encoder["default"].embedding.weight

    def loss(self, examples: Sequence[TaskExample]) -> torch.Tensor:
        # Right padding (this tokenizer's default, and named here so that another model's default cannot
        # change it): PEFT drops position ids, so only right padding keeps each text directly after the prompt.
        enc = self.tokenizer([e.text for e in examples], padding=True, padding_side="right",
                             return_tensors="pt").to(self.device)
        logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits  # (B, n+T, V)
        last = len(self.weight) + enc["attention_mask"].sum(1) - 1
        logprobs = logits[torch.arange(len(examples), device=self.device), last].float().log_softmax(-1)
        labels = torch.tensor([e.label for e in examples], device=self.device)
        return F.cross_entropy(logprobs[:, self.verbalizer_ids], labels)

    def train_step(self, optimizer: torch.optim.Optimizer, examples: Sequence[TaskExample]) -> float:
        loss = self.loss(examples)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()


def check_same_prefix_training(objective: ChoiceObjective, peft_prefix: PeftPrefix,
                               examples: Sequence[TaskExample], idx: list[int]) -> tuple[float, float, float]:
    """softprompt's and PEFT's loss and prompt gradient on one mixed-length batch must agree (exits if not).

    Both prompts must still hold their (equal) initial vectors. Returns the loss, its relative difference,
    and the largest gradient difference relative to the largest gradient entry; the gradients are cleared.
    """
    softprompt_weight = objective.module.weight
    torch.testing.assert_close(softprompt_weight, peft_prefix.weight, rtol=0, atol=0)
    loss_s = objective.backward(idx)
    loss_p = peft_prefix.loss([examples[i] for i in idx])
    loss_p.backward()
    grad_s, grad_p = softprompt_weight.grad, peft_prefix.weight.grad
    loss_diff = abs(loss_s - loss_p.item()) / abs(loss_p.item())
    grad_diff = float((grad_s - grad_p).abs().max() / grad_p.abs().max())
    softprompt_weight.grad = peft_prefix.weight.grad = None
    if max(loss_diff, grad_diff) > CHECK_TOLERANCE:
        sys.exit(f"softprompt and PEFT disagree on the check batch: loss {loss_s:.6f} vs {loss_p.item():.6f} "
                 f"(relative difference {loss_diff:.1e}), prompt gradients differ by {grad_diff:.1e} of the largest "
                 f"entry (tolerance {CHECK_TOLERANCE:.0e}); the timings would not compare the same computation")
    return loss_s, loss_diff, grad_diff


# --------------------------------------------------------------------------- FLOP counting


@dataclass
class FlopModel:
    """Analytic FLOPs (multiply-add = 2) of the matrix products; norms, softmax, rotary etc. are left out.

    Per token and forward: 2 x (weights of the transformer layers' matrices) + attention scores and
    mixing, 4 x T x (heads x head_dim) per layer for a padded length T (the masked entries are computed
    too). The vocabulary head costs 2 x (its matrix weights) per position where it is applied: the
    answer position for the engine, every position for plain HF. With the LM frozen, backward computes
    only input gradients: 1x the forward for each weight matrix (no weight gradients), 2x for the
    attention products (gradients for both operands), 1x for the head.
    """

    layer_weights: int
    attention_width: int
    layers: int
    head_weights: int

    @classmethod
    def of(cls, engine: Engine) -> FlopModel:
        lm, config = engine.lm, engine.lm.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or lm.hidden_size // heads
        return cls(
            layer_weights=sum(p.numel() for p in lm.layers.parameters() if p.dim() == 2),
            attention_width=heads * head_dim,
            layers=lm.num_layers,
            head_weights=sum(p.numel() for p in engine.head.parameters() if p.dim() == 2),
        )

    def flops(self, batch_shape: tuple[int, int], train: bool, full_head: bool) -> float:
        rows, width = batch_shape
        tokens = rows * width
        linear = 2 * self.layer_weights * tokens
        attention = 4 * self.layers * rows * width * width * self.attention_width
        head = 2 * self.head_weights * (tokens if full_head else rows)
        if train:
            return 2 * linear + 3 * attention + 2 * head
        return linear + attention + head


def batch_shapes(batches: Sequence[Sequence[Example]]) -> list[tuple[int, int]]:
    return [(len(b), max(len(e) for e in b)) for b in batches]


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def matmul_peak(device: torch.device, n: int, reps: int = 5, trials: int = 4) -> float:
    """Best FLOP/s of ``reps`` back-to-back fp32 n x n matmuls, over ``trials`` tries."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    out = torch.empty(n, n, device=device)
    torch.matmul(a, b, out=out)

    def run() -> None:
        for _ in range(reps):
            torch.matmul(a, b, out=out)

    return max(2 * n**3 * reps / timed(run, device) for _ in range(trials))


def interleaved(
    units: dict[str, list[Callable[[], object]]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median over ``repeats`` passes of each method's summed per-batch seconds.

    Within a pass, batch i of every method runs back to back (in alternating order), so that a load
    that varies over time (other processes on the machine) hits the methods alike.
    """
    names = list(units)
    n = len(units[names[0]])
    assert all(len(u) == n for u in units.values())
    passes: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        for i in range(n):
            for name in names if (r + i) % 2 == 0 else names[::-1]:
                spent[name] += timed(units[name][i], device)
        for name in names:
            passes[name].append(spent[name])
    return {name: statistics.median(ts) for name, ts in passes.items()}


# --------------------------------------------------------------------------- the phases


@dataclass
class Phase:
    """One phase's table rows, and the text around its table in the written doc."""

    title: str
    baseline: str  # the method that the speed-up column compares with
    rows: list[dict]
    conditions: str  # data and batching, above the table
    note: str  # under the table, printed too
    compared: str  # what each method computes, and the correctness checks


def load_examples(lm: LanguageModel) -> tuple[str, object, list[Example], list[Example]]:
    """(description, encoder, training examples, evaluation examples) in dataset order."""
    shared = SHARED
    p19 = shared / "qin_eisner_soft_prompts" / "db" / "trex_original" / "P19" if shared else None
    templates = shared / "lama" / "relations.jsonl" if shared else None
    if p19 is not None and p19.is_dir() and templates.is_file():
        relation = load_relation(p19, templates_file=templates, name="P19")
        source = "T-REx P19 (Qin & Eisner split, ../shared/data)"
    else:
        relation = geo_relation("city_country")
        source = "geo city_country (../shared/data not found)"
    data = encode_relation(relation, lm)
    source += f", template {relation.template!r}"
    evaluation = data.splits["test"] + data.splits["dev"]
    return source, data.encoder, data.splits["train"], evaluation


def lama_phase(lm: LanguageModel, args: argparse.Namespace, device: torch.device) -> Phase:
    """Soft-prompt training and evaluation on LAMA facts: softprompt's engine vs plain HF."""
    source, encoder, train, evaluation = load_examples(lm)
    bs = args.batch_size
    n_batches = min(args.train_batches, len(train) // bs)
    if n_batches < 1:
        sys.exit(f"only {len(train)} training examples: fewer than one batch of {bs}")
    evaluation = evaluation[: args.eval_examples]
    # The same examples for both: the first n_batches * bs of the training split (dataset order, so a
    # representative mix of lengths). Plain HF cuts them into consecutive batches; the engine batches
    # them as train_prompt does for its first epoch (seed 0), bucketing by length within this pool.
    pool = train[: n_batches * bs]
    batches = {
        "train": {"engine": [[pool[i] for i in idx] for idx in length_batches(pool, bs, shuffle_seed=1)],
                  "hf": [pool[i : i + bs] for i in range(0, len(pool), bs)]},
        "eval": {"engine": length_batches(evaluation, bs),
                 "hf": [list(range(i, min(i + bs, len(evaluation)))) for i in range(0, len(evaluation), bs)]},
    }
    # Prompts are built while the model is on the CPU (their template init embeds token ids there).
    prompts = {name: SoftPrompt(encoder) for name in ("engine", "hf", "eval")}
    lm.model.to(device)
    for prompt in prompts.values():
        prompt.to(device)
    engine = Engine(lm)
    hf = PlainHF(lm, device)
    lengths = [len(e) for e in pool]
    print(f"lama: {source}")
    print(f"train: the first {len(pool)} of {len(train)} examples, {n_batches} batches of {bs} (lengths "
          f"{min(lengths)}-{max(lengths)} tokens); eval: {len(evaluation)} examples", flush=True)

    check_batch = batches["train"]["hf"][0][:CHECK_EXAMPLES]
    loss, grad_diff = check_same_computation(engine, hf, prompts["eval"].weight, check_batch, device)
    print(f"check: same loss on a mixed-length batch ({loss:.5f}); max relative gradient difference "
          f"{grad_diff:.1e}", flush=True)

    optimizers = {name: torch.optim.Adam(prompts[name].parameters(), lr=LR) for name in ("engine", "hf")}
    ranks = {name: torch.zeros(len(evaluation), dtype=torch.long) for name in ("engine", "hf")}

    def engine_train(b: list[Example]) -> Callable[[], object]:
        return lambda: engine_train_step(engine, prompts["engine"], optimizers["engine"], b, device)

    def hf_train(b: list[Example]) -> Callable[[], object]:
        return lambda: hf.train_step(prompts["hf"], optimizers["hf"], b)

    def engine_eval(idx: list[int]) -> Callable[[], object]:
        return lambda: engine_eval_batch(engine, prompts["eval"], evaluation, idx, ranks["engine"], device)

    def hf_eval(idx: list[int]) -> Callable[[], object]:
        return lambda: hf.eval_batch(prompts["eval"], evaluation, idx, ranks["hf"])

    train_units = {"engine": [engine_train(b) for b in batches["train"]["engine"]],
                   "hf": [hf_train(b) for b in batches["train"]["hf"]]}
    eval_units = {"engine": [engine_eval(idx) for idx in batches["eval"]["engine"]],
                  "hf": [hf_eval(idx) for idx in batches["eval"]["hf"]]}
    # Warm-up: one (small) training step and evaluation batch each.
    engine_train_step(engine, prompts["engine"], optimizers["engine"], pool[:8], device)
    hf.train_step(prompts["hf"], optimizers["hf"], pool[:8])
    engine_eval_batch(engine, prompts["eval"], evaluation, list(range(8)), ranks["engine"], device)
    hf.eval_batch(prompts["eval"], evaluation, list(range(8)), ranks["hf"])

    start = time.perf_counter()
    train_s = interleaved(train_units, args.repeats, device)
    eval_s = interleaved(eval_units, args.repeats, device)
    agree = float((ranks["engine"] == ranks["hf"]).float().mean())
    print(f"check: evaluation ranks agree on {100 * agree:.1f}% of examples; timed in "
          f"{time.perf_counter() - start:.0f}s", flush=True)

    # Padding over a whole epoch of the full training split, for comparison with the timed pool.
    real = sum(len(e) for e in train)
    epoch_pad = {
        "engine": sum(len(b) * max(len(train[i]) for i in b) for b in length_batches(train, bs, 1)) / real,
        "hf": sum(len(train[i : i + bs]) * max(map(len, train[i : i + bs])) for i in range(0, len(train), bs))
        / real,
    }
    counter = FlopModel.of(engine)
    rows = []
    for phase, seconds in (("train", train_s), ("eval", eval_s)):
        examples = train if phase == "train" else evaluation
        as_examples = {m: [[examples[i] for i in idx] for idx in b] if phase == "eval" else b
                       for m, b in batches[phase].items()}
        n = sum(len(b) for b in as_examples["hf"])
        real_tokens = sum(len(e) for b in as_examples["hf"] for e in b)
        for method in ("engine", "hf"):
            shapes = batch_shapes(as_examples[method])
            flops = sum(counter.flops(s, phase == "train", full_head=method == "hf") for s in shapes)
            rows.append({
                "phase": phase,
                "method": METHODS[method],
                "ex_s": n / seconds[method],
                "ratio": seconds["hf"] / seconds[method],
                "pad": sum(r * w for r, w in shapes) / real_tokens,
                "gflop_ex": flops / n / 1e9,
                "flop_s": flops / seconds[method],
            })
    conditions = f"""Data: {source}.
Training: the first {len(pool)} examples of the training split ({n_batches} batches) per timed pass;
evaluation: {len(evaluation)} test (then dev) examples."""
    note = (f"Padding over a full epoch of all {len(train)} training examples: engine "
            f"{epoch_pad['engine']:.2f}, consecutive batches {epoch_pad['hf']:.2f} tokens computed "
            "per real token.")
    compared = f"""- **softprompt engine**: the training step of `softprompt.probing.train_prompt` (batches from
  `length_batches`, left padding, `Engine.answer_logits` computing the vocabulary projection at the
  answer position only, cross-entropy, backward, Adam on the prompt vectors) and the evaluation of
  `softprompt.probing.predict` (batches sorted by length, log-softmax over the full vocabulary, gold rank,
  gold log-probability, top-10).
- **plain HF**: written in the benchmark: the prompt vectors replace the template positions in
  `inputs_embeds`, batches in dataset order padded on the right to the batch maximum,
  `model(inputs_embeds=..., attention_mask=...)` returning logits for every position (B, T, V), the
  answer's logits gathered at each row's last real token; the same loss, Adam step and ranking.
- Before timing, the two were checked to give the same loss ({loss:.5f}), logits and prompt gradient on
  one mixed-length batch, and their evaluation ranks agreed on {100 * agree:.1f}% of the examples.
- The engine buckets within the timed pool only (to keep the run short); in real training it buckets
  over windows of 50 batches, with the padding given under the table."""
    return Phase("LAMA soft prompts: softprompt engine vs a plain Hugging Face loop", "plain HF", rows,
                 conditions, note, compared)


def peft_phase(lm: LanguageModel, args: argparse.Namespace, device: torch.device) -> Phase:
    """Prefix prompt-tuning training on SST-2: softprompt's task prompts vs PEFT's PromptTuningConfig."""
    task = load_task("sst2")
    try:
        train = task.load("train", SHARED)
    except SoftpromptError as err:
        sys.exit(f"the peft phase trains on SST-2: {err}")
    bs = args.batch_size
    n_batches = min(args.train_batches, len(train) // bs)
    # The first n_batches * bs training examples (dataset order, a representative mix of lengths) for both.
    pool = train[: n_batches * bs]
    lm.model.to(device)
    engine = Engine(lm)
    prompt = TaskPrompt(lm, "prefix", PREFIX_LENGTH, init="text", init_text=task.description)
    encoded = TaskEncoder(lm, task, prompt).encode(pool)
    # The dev set is only read for early stopping, which a timing run does not do.
    objective = ChoiceObjective(engine, prompt, encoded, encoded, normalise=False, eval_batch_size=bs)
    peft_prefix = PeftPrefix(lm, task, prompt.weight.detach())
    lengths = [len(r) for r in encoded.rows]  # prompt + text tokens: also the length of each PEFT sequence
    print(f"peft: SST-2 train, the first {len(pool)} of {len(train)} examples, {n_batches} batches of {bs} "
          f"(lengths with the {PREFIX_LENGTH}-vector prefix {min(lengths)}-{max(lengths)} tokens)", flush=True)

    check_idx = list(range(CHECK_EXAMPLES))
    check_lengths = [lengths[i] for i in check_idx]
    loss, loss_diff, grad_diff = check_same_prefix_training(objective, peft_prefix, pool, check_idx)
    check = (f"same loss on a mixed-length batch of {len(check_idx)} ({min(check_lengths)}-{max(check_lengths)} "
             f"tokens): {loss:.5f}, relative difference {loss_diff:.1e}; max relative prompt-gradient "
             f"difference {grad_diff:.1e}")
    print(f"check: {check}", flush=True)

    optimizers = {"softprompt": torch.optim.Adam(objective.param_groups(LR), lr=LR),
                  "peft": torch.optim.Adam([peft_prefix.weight], lr=LR)}
    # softprompt batches as fit does for an epoch (bucketing by length within this pool); PEFT's are
    # consecutive, as a DataLoader without a sampler gives them.
    batches = {"softprompt": length_batches(objective.items, bs, shuffle_seed=1),
               "peft": [list(range(i, i + bs)) for i in range(0, len(pool), bs)]}

    def softprompt_train(idx: list[int]) -> Callable[[], object]:
        return lambda: softprompt_task_step(objective, optimizers["softprompt"], idx)

    def peft_train(idx: list[int]) -> Callable[[], object]:
        examples = [pool[i] for i in idx]
        return lambda: peft_prefix.train_step(optimizers["peft"], examples)

    units = {"softprompt": [softprompt_train(idx) for idx in batches["softprompt"]],
             "peft": [peft_train(idx) for idx in batches["peft"]]}
    # Warm-up: one small training step each.
    softprompt_task_step(objective, optimizers["softprompt"], list(range(8)))
    peft_prefix.train_step(optimizers["peft"], pool[:8])

    start = time.perf_counter()
    seconds = interleaved(units, args.repeats, device)
    print(f"prefix training: softprompt {len(pool) / seconds['softprompt']:.1f}, PEFT "
          f"{len(pool) / seconds['peft']:.1f} examples/s ({seconds['peft'] / seconds['softprompt']:.2f}x); "
          f"timed in {time.perf_counter() - start:.0f}s", flush=True)

    counter = FlopModel.of(engine)
    rows = []
    for method in ("softprompt", "peft"):
        shapes = [(len(idx), max(lengths[i] for i in idx)) for idx in batches[method]]
        flops = sum(counter.flops(s, train=True, full_head=method == "peft") for s in shapes)
        rows.append({
            "phase": "prefix train",
            "method": PEFT_METHODS[method],
            "ex_s": len(pool) / seconds[method],
            "ratio": seconds["peft"] / seconds[method],
            "pad": sum(r * w for r, w in shapes) / sum(lengths),
            "gflop_ex": flops / len(pool) / 1e9,
            "flop_s": flops / seconds[method],
        })
    conditions = f"""Data: SST-2 (GLUE, ../shared/data), the first {len(pool)} examples of the training split
({n_batches} batches) per timed pass; the built-in task's template {task.template!r} and single-token
verbalizers {" / ".join(repr(task.target_delimiter + v) for v in task.verbalizers or [])}. Prompt: {PREFIX_LENGTH}
vectors in front of the input (layout `{prompt.layout}`), initialised from the embeddings of the task
description's tokens, the same initial vectors for both; PEFT {peft.__version__}."""
    note = f"Check before timing: {check} (tolerance {CHECK_TOLERANCE:.0e})."
    compared = f"""- **softprompt TaskPrompt**: the training step of `softprompt.tasks.fit`
  (`ChoiceObjective.backward` as `GradientDescent.fit` runs it): examples encoded by `TaskEncoder`,
  batches from `length_batches`, left padding with position ids taken from the attention mask, the final
  hidden states projected to the vocabulary at the answer position only, log-softmax over the vocabulary,
  the two verbalizers' log-probabilities, cross-entropy over them, backward, Adam on the prompt vectors.
- **PEFT PromptTuningConfig**: written in the benchmark as a PEFT user writes it: `get_peft_model(model,
  PromptTuningConfig(task_type=CAUSAL_LM, num_virtual_tokens={PREFIX_LENGTH}, prompt_tuning_init=RANDOM))` on a
  copy of the same frozen model, its prompt embedding overwritten with the same initial vectors; batches in
  dataset order padded on the right by the tokenizer (PEFT drops position ids, so right padding is what
  keeps each text directly after the prompt); `model(input_ids=..., attention_mask=...)` returning logits
  for all {PREFIX_LENGTH} + T positions (B, {PREFIX_LENGTH} + T, V), the row at each example's last real token,
  the same log-softmax, verbalizer scores, cross-entropy and Adam step on PEFT's prompt embedding.
- Before timing, the two were checked to give the same loss and prompt gradient on one mixed-length
  batch (figures under the table); training then starts from the same vectors on both sides.
- softprompt buckets within the timed pool only (to keep the run short); in real training it buckets
  over windows of 50 batches. "Tokens computed / real tokens" counts the {PREFIX_LENGTH} prompt positions as
  real tokens."""
    return Phase("Prefix prompt tuning: softprompt vs PEFT PromptTuningConfig", "PEFT", rows, conditions, note,
                 compared)


# --------------------------------------------------------------------------- data-parallel scaling

SCALING_TASK = "sst2"
SCALING_OPTIONS = ["--layout", "prefix", "--length", "20", "--train-limit", "256", "--dev-size", "64", "--epochs",
                   "2", "--patience", "2", "--batch-size", "32", "--lr", "0.003", "--eval-limit", "512", "--seed", "0"]


@dataclass(frozen=True)
class Launch:
    """One configuration of the scaling phase: how many processes, with how many threads each."""

    processes: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.processes} process{'es' if self.processes > 1 else ''} x {self.threads} thread" + (
            "s" if self.threads > 1 else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_once(launch: Launch, model: str, device: str, out: Path) -> dict:
    """One ``softprompt task train`` under ``launch``; its metrics.json."""
    command = [sys.executable, "-m", "softprompt", "task", "train", SCALING_TASK, *SCALING_OPTIONS, "--model", model,
               "--out", str(out), "--quiet"]
    if launch.processes > 1:
        command[1:3] = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(launch.processes),
                        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "softprompt"]
    env = {**os.environ, "OMP_NUM_THREADS": str(launch.threads)}
    if device == "cuda":  # what accelerate launch sets: then also a lone process takes its GPU (else the CPU)
        env["ACCELERATE_MIXED_PRECISION"] = "no"
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{launch.label} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def scaling_phase(args: argparse.Namespace) -> str:
    """The scaling table (markdown) and the conditions under it."""
    cores = os.cpu_count() or 1
    launches = [Launch(1, 1)] + [Launch(n, max(1, cores // n)) for n in args.scaling_processes]
    launches = list(dict.fromkeys(launches))
    lm = load_model(args.model)
    times: dict[Launch, list[tuple[float, float]]] = {launch: [] for launch in launches}
    results: dict[Launch, tuple[dict, torch.Tensor]] = {}
    with tempfile.TemporaryDirectory(prefix="softprompt-scaling-") as scratch:
        for repeat in range(args.scaling_repeats):
            for launch in launches if repeat % 2 == 0 else launches[::-1]:
                out = Path(scratch) / f"{launch.processes}-{launch.threads}-{repeat}"
                metrics = train_once(launch, args.model, args.device, out)
                epochs = len(metrics["history"]) - 1
                times[launch].append((epochs * metrics["train_examples"] / metrics["train_seconds"],
                                      metrics["metrics"]["n"] / metrics["eval_seconds"]))
                results[launch] = metrics, load_prompt(out / "prompt.safetensors", lm).vectors().detach()
                print(f"{launch.label}, repeat {repeat}: train {times[launch][-1][0]:.1f} ex/s, "
                      f"eval {times[launch][-1][1]:.1f} ex/s", flush=True)
    base_train, base_eval = (statistics.median(t[i] for t in times[launches[0]]) for i in (0, 1))
    reference = results[launches[0]][1]
    lines = ["| configuration | training examples/s | speed-up | evaluation examples/s | speed-up | test accuracy "
             "| max abs. prompt difference vs 1 process |", "|---|---:|---:|---:|---:|---:|---:|"]
    for launch in launches:
        train, evaluation = (statistics.median(t[i] for t in times[launch]) for i in (0, 1))
        metrics, vectors = results[launch]
        lines.append(f"| {launch.label} | {train:.1f} | {train / base_train:.2f}x | {evaluation:.1f} "
                     f"| {evaluation / base_eval:.2f}x | {100 * metrics['metrics']['accuracy']:.1f} "
                     f"| {float((vectors - reference).abs().max()):.1e} |")
    return "\n".join(lines) + (
        f"\n\n`softprompt task train {SCALING_TASK} {' '.join(SCALING_OPTIONS)}` on {args.device} ({cores} CPUs "
        f"visible), median of {args.scaling_repeats} runs per configuration; speed-ups against 1 process x 1 thread.")


class WholeBatches(Engine):
    """The engine as it batched evaluation before the CPU token budget: by length, at most ``batch_size`` rows."""

    def eval_batches(self, examples: Sequence[Sized], batch_size: int) -> list[list[int]]:
        return length_batches(examples, batch_size)


def eval_batches_phase(args: argparse.Namespace) -> str:
    """The evaluation-batching table (markdown) and the conditions under it."""
    lm = load_model(args.model)
    task = load_task("sst2")
    try:
        validation = task.load("validation", SHARED)
    except SoftpromptError as err:
        sys.exit(f"the eval-batches phase scores SST-2: {err}")
    examples = [validation[i] for i in stratified_sample([e.label for e in validation], args.eval_examples, 0)]
    prompt = TaskPrompt(lm, "prefix", PREFIX_LENGTH, init="text", init_text=task.description)
    settings = TaskSettings(layout="prefix", length=PREFIX_LENGTH)
    engines = {"at most 256 rows": WholeBatches(lm), f"also at most {CPU_EVAL_TOKENS} tokens": Engine(lm)}
    threads = sorted({1, torch.get_num_threads()})
    lines = ["| threads | batches | examples/s | speed-up | max abs. score difference |", "|---:|---|---:|---:|---:|"]
    for count in threads:
        torch.set_num_threads(count)
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        scores: dict[str, torch.Tensor] = {}
        for repeat in range(args.repeats):
            for name, engine in engines.items() if repeat % 2 == 0 else list(engines.items())[::-1]:
                start = time.perf_counter()
                scores[name] = predict(engine, prompt, task, examples, settings, 256)
                seconds[name].append(time.perf_counter() - start)
        base, reference = next(iter(engines)), scores[next(iter(engines))]
        for name in engines:
            median = statistics.median(seconds[name])
            lines.append(f"| {count} | {name} | {len(examples) / median:.1f} "
                         f"| {statistics.median(seconds[base]) / median:.2f}x "
                         f"| {float((scores[name] - reference).abs().max()):.1e} |")
            print(f"{count} thread(s), {name}: {len(examples) / median:.1f} ex/s", flush=True)
    return "\n".join(lines) + (
        f"\n\n{len(examples)} SST-2 validation examples (a stratified sample), prefix of {PREFIX_LENGTH} vectors, "
        f"{args.model} on the CPU ({os.cpu_count()} CPUs), median of {args.repeats} passes per configuration.")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                        help="the comparisons to run (default: all)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-batches", type=int, default=8, help="training batches per timed pass")
    parser.add_argument("--eval-examples", type=int, default=512, help="examples per timed evaluation pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per method (median reported)")
    parser.add_argument("--matmul-size", type=int, default=None, help="default 2048 (cpu) or 8192 (cuda)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as torch)")
    parser.add_argument("--write", action="store_true", help="also write docs/results/throughput.md")
    parser.add_argument("--note", default="", help="a remark on the run's conditions for the written file")
    parser.add_argument("--scaling-processes", type=int, nargs="+", default=[1, 2],
                        help="process counts of the scaling phase (each with the CPUs' threads shared out)")
    parser.add_argument("--scaling-repeats", type=int, default=2, help="runs per scaling configuration (median)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    if "scaling" in args.phases:
        print(f"\nData-parallel scaling\n\n{scaling_phase(args)}", flush=True)
    if "eval-batches" in args.phases:
        print(f"\nEvaluation batches on the CPU\n\n{eval_batches_phase(args)}", flush=True)
    if not set(args.phases) & {"lama", "peft"}:
        return
    lm = load_model(args.model)
    print(f"model {args.model} on {device}, {torch.get_num_threads()} threads", flush=True)
    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak = matmul_peak(device, matmul_size)
    run = {"lama": lama_phase, "peft": peft_phase}
    phases = [run[name](lm, args, device) for name in run if name in args.phases]
    peak = max(peak, matmul_peak(device, matmul_size))

    tables = [render(phase.rows, peak, phase.baseline) for phase in phases]
    for phase, table in zip(phases, tables, strict=True):
        print(f"\n{phase.title}\n\n{table}\n\n{phase.note}")
    print(f"\nMeasured dense fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s.")
    if args.write:
        command = shlex.join(["benchmarks/throughput.py", *sys.argv[1:]])
        write_doc(ROOT / "docs" / "results" / "throughput.md", phases, tables, peak, args, command.strip())


def render(rows: list[dict], peak: float, baseline: str) -> str:
    lines = [
        f"| phase | method | examples/s | speed-up vs {baseline} | tokens computed / real tokens "
        "| GFLOP / example | achieved GFLOP/s | % of fp32 matmul peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['method']} | {r['ex_s']:.1f} | {r['ratio']:.2f}x | {r['pad']:.2f} "
                     f"| {r['gflop_ex']:.2f} | {r['flop_s'] / 1e9:.1f} | {100 * r['flop_s'] / peak:.0f}% |")
    return "\n".join(lines)


def write_doc(path: Path, phases: Sequence[Phase], tables: Sequence[str], peak: float, args: argparse.Namespace,
              command: str) -> None:
    today = datetime.date.today().isoformat()
    matmul_size = args.matmul_size or (8192 if args.device == "cuda" else 2048)
    sections = "\n".join(f"""## {phase.title}

{phase.conditions}

{table}

{phase.note}

What is compared:

{phase.compared}
""" for phase, table in zip(phases, tables, strict=True))
    text = f"""# Throughput: softprompt vs a plain Hugging Face soft-prompt loop and vs PEFT prompt tuning

Command: `.venv/bin/python {command}`

Date: {today}. Machine: {platform.machine()} {platform.system()}, device `{args.device}`,
`torch.get_num_threads()` = {torch.get_num_threads()} ({os.cpu_count()} CPUs visible), torch
{torch.__version__}. **These numbers come from a 2-core CPU machine**; absolute rates on it are low, the
ratios within the run are the meaningful part.{(" " + args.note) if args.note else ""}

Model `{args.model}` (fp32, frozen). Batch size {args.batch_size} for every method. Each figure is the
median of {args.repeats} timed passes after a warm-up; within a pass the methods of a phase run batch by
batch in alternating order, so that the varying load from other processes hits them alike.

{sections}
## FLOPs

Measured dense fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s.

FLOPs are counted analytically, matrix products only (multiply-add = 2): per token and forward,
2 x the weights of the transformer layers' matrices, plus 4 x T x (heads x head dim) per layer for the
attention scores and mixing at padded length T (padding is computed, so it is counted); the vocabulary
head, 2 x its weights, at the answer position only (softprompt) or at every position (plain HF, and PEFT,
whose positions include the virtual tokens). With the LM frozen, backward computes input gradients only:
1x the forward for each weight matrix and the head, 2x for the attention products. Norms, softmax, rotary
embeddings, the loss and Adam are not counted. "tokens computed / real tokens" is the padding overhead of
each batching. The fp32 peak is the best of several timed runs of back-to-back {matmul_size}-square float32
`torch.matmul`s, measured before and after the benchmark in the same run, with the same threads and under
the same background load.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
