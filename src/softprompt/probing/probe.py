"""Factual knowledge probing (LAMA-style): encode a relation, train a prompt, evaluate, write a run
directory (``softprompt.runs``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from softprompt.engine import EVAL_BATCH_SIZE, Engine, length_batches
from softprompt.errors import SoftpromptError
from softprompt.metrics import answer_ranks, ranking_metrics
from softprompt.models import LanguageModel
from softprompt.optimizers import FitResult, TrainConfig
from softprompt.probing.objective import train_prompt
from softprompt.probing.relations import SPLITS, Relation
from softprompt.progress import progress_bar
from softprompt.prompts import HardPrompt, Prompt, TemplatePrompt
from softprompt.prompts.deep import DeepPrompt
from softprompt.prompts.soft import SoftPrompt
from softprompt.runs import DROPPED, RunDir, warn
from softprompt.templates import Example, TemplateEncoder

# The kinds of prompt a probe trains or scores, by the name the command line uses.
MODES: dict[str, type[TemplatePrompt]] = {cls.kind: cls for cls in (HardPrompt, SoftPrompt, DeepPrompt)}
# Why a fact is dropped: the answer is read from one vocabulary projection, so it must be one token.
MULTI_TOKEN = "the answer is not a single token for this model"


def dropped_fact(split: str, subject: str, answer: str) -> dict[str, str]:
    """A row of a run's dropped.jsonl: a fact left out of ``split``, and why."""
    return {"split": split, "subject": subject, "answer": answer, "reason": MULTI_TOKEN}


@dataclass
class EncodedRelation:
    """A relation's facts encoded for one model and template, with what was dropped and why."""

    name: str
    encoder: TemplateEncoder
    splits: dict[str, list[Example]]
    facts: dict[str, list[tuple[str, str]]]  # (subject, answer) per kept example, aligned with splits
    dropped: dict[str, int]  # facts whose answer is not a single token for this model
    dropped_facts: list[dict[str, str]] = field(default_factory=list)  # those facts (dropped_fact rows)


def encode_relation(relation: Relation, lm: LanguageModel, limits: dict[str, int] | None = None) -> EncodedRelation:
    """Encode every split, keeping single-token answers; ``limits`` caps each split after filtering."""
    encoder = TemplateEncoder(relation.template, lm)
    splits: dict[str, list[Example]] = {}
    kept: dict[str, list[tuple[str, str]]] = {}
    dropped: dict[str, int] = {}
    dropped_facts: list[dict[str, str]] = []
    for split in SPLITS:
        examples, facts = [], []
        for number, fact in enumerate(relation.splits.get(split, []), start=1):
            try:
                example = encoder.encode(fact.subject, fact.answer)
            except SoftpromptError as err:
                raise SoftpromptError(f"relation {relation.name}, {split} fact {number}: {err}") from err
            if example is not None:
                examples.append(example)
                facts.append((fact.subject, fact.answer))
            else:
                dropped_facts.append(dropped_fact(split, fact.subject, fact.answer))
        dropped[split] = len(relation.splits.get(split, [])) - len(examples)
        cap = (limits or {}).get(split)
        splits[split], kept[split] = examples[:cap], facts[:cap]
    return EncodedRelation(relation.name, encoder, splits, kept, dropped, dropped_facts)


def no_usable_facts(relation: str, split: str, dropped: int, hint: str = "") -> SoftpromptError:
    return SoftpromptError(f"relation {relation}: the {split} split has no usable facts "
                           f"({dropped} dropped because their answer is not a single token){hint and '; ' + hint}")


class SplitData(Protocol):
    """Encoded facts per split, and how many each split dropped (a relation's, or a mixture's)."""

    name: str
    splits: Mapping[str, Sequence[object]]
    dropped: Mapping[str, int]


def require_facts(data: SplitData, splits: Sequence[str], hint: str = "") -> None:
    """Refuse encoded data with an empty split among ``splits`` (before anything is written)."""
    for split in splits:
        if not data.splits[split]:
            raise no_usable_facts(data.name, split, data.dropped[split], hint)


def make_prompt(mode: str, encoder: TemplateEncoder, init: str = "template", seed: int = 0) -> Prompt:
    if mode not in MODES:
        raise SoftpromptError(f"unknown prompt mode {mode!r}; choose one of: {', '.join(MODES)}")
    if mode == "hard" and init != "template":
        raise SoftpromptError("a hard prompt is the template's own words; --init applies to soft/deep only")
    return MODES[mode].from_encoder(encoder, init=init, seed=seed)


def predict(
    engine: Engine, prompt: Prompt, examples: Sequence[Example], batch_size: int = EVAL_BATCH_SIZE,
    top_k: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gold ranks, gold log-probs, and top-k (ids, log-probs) per example, in input order."""
    n = len(examples)
    ranks = torch.empty(n, dtype=torch.long)
    gold = torch.empty(n)
    top_ids = torch.empty(n, top_k, dtype=torch.long)
    top_lp = torch.empty(n, top_k)
    with torch.inference_mode():
        for idx in progress_bar(length_batches(examples, batch_size), "scoring"):
            batch = engine.collate([examples[i] for i in idx])
            logprobs = engine.answer_logits(batch, prompt.vectors(), prompt.deltas()).log_softmax(-1)
            where = torch.tensor(idx)
            ranks[where] = answer_ranks(logprobs, batch.answer_ids).cpu()
            gold[where] = logprobs.gather(1, batch.answer_ids[:, None])[:, 0].cpu()
            best = logprobs.topk(top_k, dim=-1)
            top_ids[where], top_lp[where] = best.indices.cpu(), best.values.cpu()
    return ranks, gold, top_ids, top_lp


def evaluate(
    engine: Engine, prompt: Prompt, data: EncodedRelation, split: str = "test",
    batch_size: int = EVAL_BATCH_SIZE
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics on one split and per-example predictions (top-10 with log-probabilities)."""
    examples = data.splits.get(split) or []
    if not examples:
        raise no_usable_facts(data.name, split, data.dropped.get(split, 0))
    ranks, gold, top_ids, top_lp = predict(engine, prompt, examples, batch_size)
    tok = engine.lm.tokenizer
    rows = []
    for i, (subject, answer) in enumerate(data.facts[split]):
        rows.append({
            "relation": data.name,
            "subject": subject,
            "answer": answer,
            "rank": int(ranks[i]),
            "answer_logprob": round(float(gold[i]), 5),
            "top10": [[tok.decode([t]).strip(), round(float(lp), 5)]
                      for t, lp in zip(top_ids[i].tolist(), top_lp[i].tolist(), strict=True)],
        })
    return ranking_metrics(ranks.tolist()), rows


def run_settings(
    lm: LanguageModel, relation: Relation, mode: str, init: str, config: TrainConfig,
    limits: Mapping[str, int] | None,
) -> dict[str, Any]:
    """The entries of a run's config.json that must be equal for the run to be resumed or reused."""
    return {"model": lm.name, "relation": relation.name, "template": relation.template, "mode": mode,
            "init": init, "train": asdict(config), "limits": dict(limits or {})}


def run_probe(
    lm: LanguageModel,
    relation: Relation,
    out: Path,
    mode: str = "soft",
    init: str = "template",
    config: TrainConfig | None = None,
    limits: dict[str, int] | None = None,
    resume: bool = False,
    progress: bool = True,
    engine: Engine | None = None,
    data: EncodedRelation | None = None,
) -> dict[str, Any]:
    """Train (unless ``mode='hard'``) and test one prompt for one relation; write the run directory.
    ``data`` is the relation already encoded for ``lm`` with these ``limits``, if the caller has it."""
    config = config or TrainConfig()
    engine = engine or Engine(lm)
    data = data or encode_relation(relation, lm, limits)
    prompt = make_prompt(mode, data.encoder, init, config.seed)
    # Refuse unusable data before anything is written to the run directory.
    require_facts(data, ("train", "dev", "test") if mode != "hard" else ("test",),
                  "training needs facts in train, dev and test (a split directory)")
    run = RunDir(out, "softprompt probe train")
    settings = run_settings(lm, relation, mode, init, config, limits) | {
        "examples": {s: len(e) for s, e in data.splits.items()}, "dropped_multi_token": data.dropped,
    }
    with run.open(settings, resume):
        run.write_rows(DROPPED, data.dropped_facts)
        result: FitResult | None = None
        warnings: list[str] = []
        if mode != "hard":
            result = train_prompt(engine, prompt, data.splits["train"], data.splits["dev"], config,
                                  checkpoint=run.checkpoint, resume=resume, progress=progress)
            for message in result.warnings():
                warn(warnings, message)
        metrics, rows = evaluate(engine, prompt, data, "test", config.eval_batch_size)
        doc = {"relation": relation.name, "mode": mode, "init": init, "test": metrics,
               "dropped_multi_token": data.dropped, "warnings": warnings}
        if result is not None:
            doc |= {"best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss, "history": result.history}
        return run.finish(doc, rows, prompt, {"relation": relation.name})


def eval_probe(
    lm: LanguageModel, relation: Relation, out: Path, prompt: Prompt | None = None, prompt_path: Path | None = None,
    split: str = "test", limits: dict[str, int] | None = None, engine: Engine | None = None,
) -> tuple[dict[str, Any], EncodedRelation]:
    """Score a saved prompt (``prompt``, read from ``prompt_path``), or the relation's template as a hard
    prompt, on one split; write the run directory (no prompt file: the prompt is the one given)."""
    data = encode_relation(relation, lm, limits)
    require_facts(data, (split,), "choose another --split, or data with single-token answers")
    scored = prompt or make_prompt("hard", data.encoder)
    if not isinstance(scored, TemplatePrompt):
        raise SoftpromptError(f"{prompt_path} holds a {scored.kind} prompt; probe eval scores hard, soft and deep "
                              "prompts (evaluate mixtures with mixture train --tune none, task prompts with task eval)")
    metrics, rows = evaluate(engine or Engine(lm), scored, data, split)
    settings = {
        "model": lm.name, "relation": relation.name, "template": relation.template, "mode": scored.kind,
        "init": scored.init, "prompt": str(prompt_path) if prompt_path is not None else None, "split": split,
        "limits": limits or {}, "examples": {split: len(data.splits[split])},
        "dropped_multi_token": data.dropped,
    }
    doc = {"relation": relation.name, "mode": scored.kind, "init": scored.init, split: metrics,
           "dropped_multi_token": data.dropped}
    run = RunDir(out, "softprompt probe eval")
    with run.open(settings):
        run.write_rows(DROPPED, data.dropped_facts)
        return run.finish(doc, rows), data
