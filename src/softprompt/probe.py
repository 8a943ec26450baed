"""Factual knowledge probing (LAMA-style): encode a relation, train a prompt, evaluate, write a run.

A run directory holds ``config.json``, ``metrics.json``, ``predictions.jsonl`` and
``prompt.safetensors`` (plus ``checkpoint.safetensors`` while training), each written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.data import Relation
from softprompt.engine import Engine, length_batches
from softprompt.errors import SoftpromptError
from softprompt.io import write_json, write_jsonl
from softprompt.metrics import answer_ranks, ranking_metrics
from softprompt.models import LanguageModel
from softprompt.prompts import PROMPT_TYPES, Prompt
from softprompt.templates import Example, TemplateEncoder
from softprompt.train import TrainConfig, TrainResult, train_prompt

SPLITS = ("train", "dev", "test")


@dataclass
class EncodedRelation:
    """A relation's facts encoded for one model and template, with what was dropped and why."""

    name: str
    encoder: TemplateEncoder
    splits: dict[str, list[Example]]
    facts: dict[str, list[tuple[str, str]]]  # (subject, answer) per kept example, aligned with splits
    dropped: dict[str, int]  # facts whose answer is not a single token for this model


def encode_relation(relation: Relation, lm: LanguageModel, limits: dict[str, int] | None = None) -> EncodedRelation:
    """Encode every split, keeping single-token answers; ``limits`` caps each split after filtering."""
    encoder = TemplateEncoder(relation.template, lm)
    splits: dict[str, list[Example]] = {}
    kept: dict[str, list[tuple[str, str]]] = {}
    dropped: dict[str, int] = {}
    for split in SPLITS:
        examples, facts = [], []
        for fact in relation.splits.get(split, []):
            example = encoder.encode(fact.subject, fact.answer)
            if example is not None:
                examples.append(example)
                facts.append((fact.subject, fact.answer))
        dropped[split] = len(relation.splits.get(split, [])) - len(examples)
        cap = (limits or {}).get(split)
        splits[split], kept[split] = examples[:cap], facts[:cap]
    return EncodedRelation(relation.name, encoder, splits, kept, dropped)


def no_usable_facts(relation: str, split: str, dropped: int) -> SoftpromptError:
    return SoftpromptError(f"relation {relation}: the {split} split has no usable facts "
                           f"({dropped} dropped because their answer is not a single token)")


def make_prompt(mode: str, encoder: TemplateEncoder, init: str = "template", seed: int = 0) -> Prompt:
    if mode not in PROMPT_TYPES:
        raise SoftpromptError(f"unknown prompt mode {mode!r}; choose one of: {', '.join(PROMPT_TYPES)}")
    if mode == "hard":
        if init != "template":
            raise SoftpromptError("a hard prompt is the template's own words; --init applies to soft/deep only")
        return PROMPT_TYPES[mode](encoder)
    return PROMPT_TYPES[mode](encoder, init=init, seed=seed)


def predict(
    engine: Engine, prompt: Prompt, examples: Sequence[Example], batch_size: int = 256, top_k: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gold ranks, gold log-probs, and top-k (ids, log-probs) per example, in input order."""
    n = len(examples)
    ranks = torch.empty(n, dtype=torch.long)
    gold = torch.empty(n)
    top_ids = torch.empty(n, top_k, dtype=torch.long)
    top_lp = torch.empty(n, top_k)
    with torch.inference_mode():
        for idx in length_batches(examples, batch_size):
            batch = engine.collate([examples[i] for i in idx])
            logprobs = engine.answer_logits(batch, prompt.vectors(), prompt.deltas()).log_softmax(-1)
            where = torch.tensor(idx)
            ranks[where] = answer_ranks(logprobs, batch.answer_ids).cpu()
            gold[where] = logprobs.gather(1, batch.answer_ids[:, None])[:, 0].cpu()
            best = logprobs.topk(top_k, dim=-1)
            top_ids[where], top_lp[where] = best.indices.cpu(), best.values.cpu()
    return ranks, gold, top_ids, top_lp


def evaluate(
    engine: Engine, prompt: Prompt, data: EncodedRelation, split: str = "test", batch_size: int = 256
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


def changed_settings(run_dir: Path, settings: Mapping[str, Any]) -> list[str]:
    """The names of ``settings`` that differ from those of the run in ``run_dir`` (none if it has no run)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return []
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SoftpromptError(
            f"{path}: cannot read it ({err}); delete {run_dir} or use another directory"
        ) from err
    return [key for key, value in settings.items() if stored.get(key) != value]


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
) -> dict[str, Any]:
    """Train (unless ``mode='hard'``) and test one prompt for one relation; write the run directory."""
    config = config or TrainConfig()
    engine = engine or Engine(lm)
    data = encode_relation(relation, lm, limits)
    prompt = make_prompt(mode, data.encoder, init, config.seed)
    # Refuse unusable data before anything is written to the run directory.
    needed = ("train", "dev", "test") if mode != "hard" else ("test",)
    for split in needed:
        if not data.splits[split]:
            raise no_usable_facts(relation.name, split, data.dropped[split])
    out.mkdir(parents=True, exist_ok=True)
    run_config = run_settings(lm, relation, mode, init, config, limits) | {
        "examples": {s: len(e) for s, e in data.splits.items()}, "dropped_multi_token": data.dropped,
    }
    write_json(out / "config.json", run_config)
    result: TrainResult | None = None
    if mode != "hard":
        result = train_prompt(engine, prompt, data.splits["train"], data.splits["dev"], config,
                              checkpoint=out / "checkpoint.safetensors", resume=resume, progress=progress)
    metrics, rows = evaluate(engine, prompt, data, "test", config.eval_batch_size)
    metrics_doc = {"relation": relation.name, "mode": mode, "init": init, "test": metrics,
                   "dropped_multi_token": data.dropped}
    if result is not None:
        metrics_doc |= {"best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss,
                        "history": result.history}
    prompt.save(out / "prompt.safetensors", extra={"relation": relation.name})
    write_jsonl(out / "predictions.jsonl", rows)
    write_json(out / "metrics.json", metrics_doc)
    return metrics_doc
