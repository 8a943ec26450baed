"""Factual knowledge probing (LAMA-style): encode a relation, train a prompt, evaluate, write a run
directory (``softprompt.runs``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from softprompt import distributed
from softprompt.engine import EVAL_BATCH_SIZE, Engine
from softprompt.errors import SoftpromptError
from softprompt.metrics import answer_ranks, ranking_metrics
from softprompt.models import LanguageModel
from softprompt.optimizers import FitResult, Optimizer, TrainConfig
from softprompt.optimizers.search import fluency_of, found_prompt, search_settings
from softprompt.probing.candidates import CandidateOptions, Candidates, CandidateScorer, build_candidates
from softprompt.probing.objective import train_candidates, train_prompt
from softprompt.probing.relations import SPLITS, Relation
from softprompt.probing.search import TemplateSearch
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
# In candidate mode any answer can be scored, but only against the candidates (a user's list may lack it).
NOT_CANDIDATE = "the answer is not among the candidate answers"


def dropped_fact(split: str, subject: str, answer: str, reason: str = MULTI_TOKEN) -> dict[str, str]:
    """A row of a run's dropped.jsonl: a fact left out of ``split``, and why."""
    return {"split": split, "subject": subject, "answer": answer, "reason": reason}


@dataclass
class EncodedRelation:
    """A relation's facts encoded for one model and template, with what was dropped and why."""

    name: str
    encoder: TemplateEncoder
    splits: dict[str, list[Example]]
    facts: dict[str, list[tuple[str, str]]]  # (subject, answer) per kept example, aligned with splits
    dropped: dict[str, int]  # facts whose answer is not a single token (or not a candidate) for this model
    dropped_facts: list[dict[str, str]] = field(default_factory=list)  # those facts (dropped_fact rows)
    candidates: Candidates | None = None  # candidate mode: the answers every fact is ranked among
    gold: dict[str, list[int]] = field(default_factory=dict)  # candidate mode: each kept fact's answer's index

    @property
    def drop_reason(self) -> str:
        """Why facts were dropped, for messages."""
        if self.candidates is None:
            return "their answer is not a single token"
        return f"their answer is not among the {len(self.candidates)} candidates"

    @property
    def dropped_key(self) -> str:
        """The name under which config.json and metrics.json count the dropped facts."""
        return "dropped_multi_token" if self.candidates is None else "dropped_not_candidate"


def encode_relation(relation: Relation, lm: LanguageModel, limits: dict[str, int] | None = None,
                    candidates: CandidateOptions | None = None) -> EncodedRelation:
    """Encode every split, keeping single-token answers (with ``candidates``: answers among the candidates);
    ``limits`` caps each split after filtering."""
    encoder = TemplateEncoder(relation.template, lm)
    chosen = build_candidates(candidates, relation, encoder) if candidates is not None else None
    splits: dict[str, list[Example]] = {}
    kept: dict[str, list[tuple[str, str]]] = {}
    golds: dict[str, list[int]] = {}
    dropped: dict[str, int] = {}
    dropped_facts: list[dict[str, str]] = []
    for split in SPLITS:
        examples, facts, gold = [], [], []
        for number, fact in enumerate(relation.splits.get(split, []), start=1):
            try:
                if chosen is None:
                    example = encoder.encode(fact.subject, fact.answer)
                elif (answer := chosen.index(encoder.answer_tokens(fact.answer))) is None:
                    example = None
                else:
                    example = encoder.query(fact.subject)
                    gold.append(answer)
                    # The longest candidate extends the query: its tokens (causal LMs) or masks (masked LMs).
                    lm.check_length(len(example) + chosen.longest - 1,
                                    f"the query for subject {fact.subject[:40]!r} with the longest candidate")
            except SoftpromptError as err:
                raise SoftpromptError(f"relation {relation.name}, {split} fact {number}: {err}") from err
            if example is not None:
                examples.append(example)
                facts.append((fact.subject, fact.answer))
            else:
                reason = MULTI_TOKEN if chosen is None else NOT_CANDIDATE
                dropped_facts.append(dropped_fact(split, fact.subject, fact.answer, reason))
        dropped[split] = len(relation.splits.get(split, [])) - len(examples)
        cap = (limits or {}).get(split)
        splits[split], kept[split], golds[split] = examples[:cap], facts[:cap], gold[:cap]
    return EncodedRelation(relation.name, encoder, splits, kept, dropped, dropped_facts, chosen,
                           golds if chosen is not None else {})


def no_usable_facts(relation: str, split: str, dropped: int, hint: str = "",
                    reason: str = "their answer is not a single token") -> SoftpromptError:
    return SoftpromptError(f"relation {relation}: the {split} split has no usable facts "
                           f"({dropped} dropped because {reason}){hint and '; ' + hint}")


class SplitData(Protocol):
    """Encoded facts per split, and how many each split dropped (a relation's, or a mixture's)."""

    name: str
    splits: Mapping[str, Sequence[object]]
    dropped: Mapping[str, int]


def require_facts(data: SplitData, splits: Sequence[str], hint: str = "") -> None:
    """Refuse encoded data with an empty split among ``splits`` (before anything is written)."""
    for split in splits:
        if not data.splits[split]:
            reason = getattr(data, "drop_reason", None)  # a mixture drops facts for the default reason only
            raise no_usable_facts(data.name, split, data.dropped[split], hint, *([reason] if reason else []))


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
        for idx in progress_bar(engine.eval_batches(examples, batch_size), "scoring"):
            batch = engine.collate([examples[i] for i in idx])
            logprobs = engine.answer_logits(batch, prompt.vectors(), prompt.deltas()).log_softmax(-1)
            where = torch.tensor(idx)
            ranks[where] = answer_ranks(logprobs, batch.answer_ids).cpu()
            gold[where] = logprobs.gather(1, batch.answer_ids[:, None])[:, 0].cpu()
            best = logprobs.topk(top_k, dim=-1)
            top_ids[where], top_lp[where] = best.indices.cpu(), best.values.cpu()
    return ranks, gold, top_ids, top_lp


def predict_candidates(
    scorer: CandidateScorer, prompt: Prompt, examples: Sequence[Example], gold: Sequence[int], top_k: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gold ranks among the candidates (ties count against the answer), gold scores, and the top-k candidates
    (indices, scores) per example, in input order."""
    scores = distributed.current().gather_rows(
        lambda idx: scorer.all_scores([examples[i] for i in idx], prompt.vectors(), prompt.deltas()), len(examples))
    answers = torch.tensor(list(gold), dtype=torch.long)
    best = scores.topk(min(top_k, scores.shape[1]), dim=-1)
    return answer_ranks(scores, answers), scores.gather(1, answers[:, None])[:, 0], best.indices, best.values


def evaluate(
    engine: Engine, prompt: Prompt, data: EncodedRelation, split: str = "test",
    batch_size: int = EVAL_BATCH_SIZE
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics on one split and per-example predictions (top-10 with log-probabilities, or in candidate mode
    the top-10 candidates with their scores)."""
    examples = data.splits.get(split) or []
    if not examples:
        raise no_usable_facts(data.name, split, data.dropped.get(split, 0), reason=data.drop_reason)
    if data.candidates is not None:
        return evaluate_candidates(CandidateScorer(engine, data.candidates), prompt, data, split)
    # Under data parallelism each process scores its share of the examples.
    ranks, gold, top_ids, top_lp = distributed.current().gather_rows(
        lambda idx: predict(engine, prompt, [examples[i] for i in idx], batch_size), len(examples))
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


def evaluate_candidates(
    scorer: CandidateScorer, prompt: Prompt, data: EncodedRelation, split: str
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``evaluate`` in candidate mode: ranks among the candidates, predictions with the top-10 candidates."""
    ranks, gold, top, top_scores = predict_candidates(scorer, prompt, data.splits[split], data.gold[split])
    texts = scorer.candidates.texts
    rows = [{
        "relation": data.name,
        "subject": subject,
        "answer": answer,
        "rank": int(ranks[i]),
        "answer_score": round(float(gold[i]), 5),
        "top10": [[texts[c], round(float(score), 5)] for c, score in zip(top[i].tolist(), top_scores[i].tolist(),
                                                                         strict=True)],
    } for i, (subject, answer) in enumerate(data.facts[split])]
    return ranking_metrics(ranks.tolist()), rows


def run_settings(
    lm: LanguageModel, relation: Relation, mode: str, init: str, config: TrainConfig,
    limits: Mapping[str, int] | None, candidates: Candidates | None = None, search: Optimizer | None = None,
) -> dict[str, Any]:
    """The entries of a run's config.json that must be equal for the run to be resumed or reused (in candidate
    mode, also the candidates and their scoring; for a searched prompt, the search's settings)."""
    return {"model": lm.name, "relation": relation.name, "template": relation.template, "mode": mode,
            "init": init, "train": asdict(config), "limits": dict(limits or {}),
            **(candidates.settings() if candidates is not None else {}),
            **({"search": search_settings(search)} if search is not None else {})}


def resume_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``run_settings`` as a stored run must match them to be resumed or reused: a vocabulary run also needs
    the stored run to have no candidate ranking (its config.json simply lacks the key)."""
    return settings if "ranking" in settings else settings | {"ranking": None}


def ranking(data: EncodedRelation) -> dict[str, Any]:
    """What metrics.json says of how answers were ranked: nothing for the vocabulary (the paper's protocol,
    whose files stay as they were), the candidates otherwise."""
    return data.candidates.settings() if data.candidates is not None else {}


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
    candidates: CandidateOptions | None = None,
    search: Optimizer | None = None,
) -> dict[str, Any]:
    """Train (unless ``mode='hard'``) and test one prompt for one relation; write the run directory.
    ``data`` is the relation already encoded for ``lm`` with these ``limits`` (and ``candidates``: rank answers
    among candidate answers), if the caller has it. With ``search`` (PEZ, AutoPrompt, RLPrompt; ``mode`` is
    then "hard"), the template's [T] triggers, or all its tokens, are searched from ``init`` ("random",
    "keep" or a text), and the run's prompt is the hard prompt found."""
    config = config or TrainConfig()
    engine = engine or Engine(lm)
    data = data or encode_relation(relation, lm, limits, candidates)
    if search is not None and (mode != "hard" or data.candidates is not None):
        raise SoftpromptError("a searched prompt is a hard prompt scored over the vocabulary (mode hard, no "
                              "candidate answers)")
    prompt = make_prompt(mode, data.encoder, init, config.seed) if search is None else None
    # Refuse unusable data before anything is written to the run directory.
    require_facts(data, ("train", "dev", "test") if mode != "hard" or search else ("test",),
                  "training needs facts in train, dev and test (a split directory)")
    run = RunDir(out, "softprompt probe train" if search is None else f"softprompt search {search.name}")
    settings = run_settings(lm, relation, mode, init, config, limits, data.candidates, search) | {
        "examples": {s: len(e) for s, e in data.splits.items()}, data.dropped_key: data.dropped,
    }
    with run.open(settings, resume):
        run.write_rows(DROPPED, data.dropped_facts)
        result: FitResult | None = None
        warnings: list[str] = []
        found: dict[str, Any] = {}
        if search is not None:
            objective = TemplateSearch(engine, data.encoder, data.splits["train"], data.splits["dev"], init=init,
                                       seed=config.seed)
            result = search.fit(objective, run.checkpoint, resume, settings={"relation": relation.name})
            prompt = result.prompt
            found = found_prompt(prompt, fluency_of(search, lm))
        elif mode != "hard":
            if data.candidates is not None:
                result = train_candidates(CandidateScorer(engine, data.candidates), prompt, data.splits["train"],
                                          data.gold["train"], data.splits["dev"], data.gold["dev"], config,
                                          checkpoint=run.checkpoint, resume=resume, progress=progress)
            else:
                result = train_prompt(engine, prompt, data.splits["train"], data.splits["dev"], config,
                                      checkpoint=run.checkpoint, resume=resume, progress=progress)
        for message in result.warnings() if result is not None else []:
            warn(warnings, message)
        metrics, rows = evaluate(engine, prompt, data, "test", config.eval_batch_size)
        doc = {"relation": relation.name, "mode": mode, "init": init, **ranking(data), "test": metrics,
               data.dropped_key: data.dropped, "warnings": warnings, **found}
        if result is not None:
            doc |= {"best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss, "history": result.history}
        return run.finish(doc, rows, prompt, {"relation": relation.name})


def eval_probe(
    lm: LanguageModel, relation: Relation, out: Path, prompt: Prompt | None = None, prompt_path: Path | None = None,
    split: str = "test", limits: dict[str, int] | None = None, engine: Engine | None = None,
    candidates: CandidateOptions | None = None,
) -> tuple[dict[str, Any], EncodedRelation]:
    """Score a saved prompt (``prompt``, read from ``prompt_path``), or the relation's template as a hard
    prompt, on one split (with ``candidates``: among candidate answers); write the run directory (no prompt
    file: the prompt is the one given)."""
    data = encode_relation(relation, lm, limits, candidates)
    require_facts(data, (split,), "choose another --split, or data with single-token answers"
                  if candidates is None else "choose another --split, or candidates that include the answers")
    scored = prompt or make_prompt("hard", data.encoder)
    if not isinstance(scored, TemplatePrompt):
        raise SoftpromptError(f"{prompt_path} holds a {scored.kind} prompt; probe eval scores hard, soft and deep "
                              "prompts (evaluate mixtures with mixture train --tune none, task prompts with task eval)")
    metrics, rows = evaluate(engine or Engine(lm), scored, data, split)
    settings = {
        "model": lm.name, "relation": relation.name, "template": relation.template, "mode": scored.kind,
        "init": scored.init, "prompt": str(prompt_path) if prompt_path is not None else None, "split": split,
        "limits": limits or {}, "examples": {split: len(data.splits[split])},
        data.dropped_key: data.dropped, **ranking(data),
    }
    doc = {"relation": relation.name, "mode": scored.kind, "init": scored.init, **ranking(data), split: metrics,
           data.dropped_key: data.dropped}
    run = RunDir(out, "softprompt probe eval")
    with run.open(settings):
        run.write_rows(DROPPED, data.dropped_facts)
        return run.finish(doc, rows), data
