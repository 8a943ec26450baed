"""Knowledge probing with mixtures of prompts (Qin & Eisner §3.3–3.5): build a mixture from a prompt set,
prune it to the prompts that matter, train it by gradient descent or EM, evaluate it, write the run."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from softprompt.engine import MAX_ROWS, Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.optimizers import OPTIMIZERS, SELECTIONS, FitResult, TrainConfig, warmup_history
from softprompt.probing.mixture.data import (
    AnswerFirst,
    MixtureData,
    PromptSetReport,
    encode_mixture_data,
    encode_prompt_set,
)
from softprompt.probing.mixture.objective import WEIGHTS_LR, MixtureObjective
from softprompt.probing.mixture.scoring import SPARSE_DRAWS, SparseDraw, evaluate_mixture, select_prompts
from softprompt.probing.probe import require_facts
from softprompt.probing.relations import Relation
from softprompt.prompts import MixturePrompt, effective_prompts
from softprompt.runs import DROPPED, WARMUP, RunDir, warn

log = logging.getLogger(__name__)

METHODS = ("gradient", "em")  # the optimizers that train a mixture


@dataclass
class MixtureSettings:
    """What defines a mixture run (besides the model, data and TrainConfig)."""

    prompts: str  # the prompt set's name, e.g. "min:P19" or a file path
    templates: tuple[str, ...]
    init: str = "template"
    mode: str = "soft"  # component prompts: hard, soft or deep
    method: str = "gradient"
    tune: str = "both"
    data_dependent: bool = False
    top_k: int | None = None  # train only the k most useful prompts (see select_prompts)
    answer_first: AnswerFirst = "reorder"
    max_rows: int = MAX_ROWS
    weights_lr: float = WEIGHTS_LR
    selection: str = "weight"  # how select_prompts judges which top_k prompts are most useful
    prune_after: int = 0  # epochs of training the whole mixture before top_k prunes it (0: prune untrained)
    sparse_k: int | None = None  # backpropagate through each fact's k most probable prompts (see sparse_score)
    sparse_m: int | None = None  # ... and through each prompt's m most probable facts of the batch
    sparse_draw: SparseDraw = "top"  # or "sample": draw each prompt's m facts by posterior (see sparse_score)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SoftpromptError(f"unknown --method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.top_k is not None and self.top_k < 1:
            raise SoftpromptError(f"--top-k must be at least 1, got {self.top_k}")
        if self.prune_after < 0:
            raise SoftpromptError(f"--prune-after must be 0 or more epochs, got {self.prune_after}")
        if self.prune_after and self.top_k is None:
            raise SoftpromptError("--prune-after says when --top-k prunes the mixture; give --top-k as well")
        if self.selection not in SELECTIONS:
            raise SoftpromptError(f"unknown --select {self.selection!r}; choose one of: {', '.join(SELECTIONS)}")
        if self.mode == "hard" and self.tune == "prompts":
            raise SoftpromptError("hard prompts have no vectors to tune; use --mode soft or deep, or --tune weights")
        for flag, value in (("--sparse-k", self.sparse_k), ("--sparse-m", self.sparse_m)):
            if value is not None and value < 1:
                raise SoftpromptError(f"{flag} must be at least 1, got {value}")
            if value is not None and (self.mode == "hard" or self.tune in ("weights", "none")):
                raise SoftpromptError(f"{flag} chooses which prompts' vectors get gradients; it needs tuned vectors "
                                      "(--mode soft or deep with --tune both or prompts)")
        if self.sparse_draw not in SPARSE_DRAWS:
            raise SoftpromptError(f"unknown --sparse-draw {self.sparse_draw!r}; choose one of: "
                                  f"{', '.join(SPARSE_DRAWS)}")
        if self.sparse_draw == "sample" and self.sparse_m is None:
            raise SoftpromptError("--sparse-draw sample draws each prompt's --sparse-m facts; give --sparse-m as well")
        if self.sparse_draw == "sample" and self.method != "gradient":
            raise SoftpromptError("--sparse-draw sample weighs the drawn facts by the current posterior, which only "
                                  "the gradient method's objective uses; use --method gradient or --sparse-draw top")
        if self.mode == "hard" and self.tune == "both":
            self.tune = "weights"  # all a mixture of hard prompts can learn
        if self.max_rows < 1:
            raise SoftpromptError(f"max_rows must be at least 1, got {self.max_rows}")
        if not (self.weights_lr > 0 and math.isfinite(self.weights_lr)):
            raise SoftpromptError(f"--weights-lr must be a positive number, got {self.weights_lr}")


def run_mixture(
    lm: LanguageModel,
    relation: Relation,
    settings: MixtureSettings,
    out: Path,
    config: TrainConfig | None = None,
    limits: Mapping[str, int] | None = None,
    resume: bool = False,
    progress: bool = True,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Build, prune, train (unless ``tune='none'``) and test a mixture for one relation; write the run."""
    config = config or TrainConfig()
    engine = engine or Engine(lm)
    started = time.perf_counter()
    encoders, sources, report = encode_prompt_set(settings.templates, lm, settings.answer_first)
    mixture = MixturePrompt(encoders, settings.mode, settings.init, config.seed, settings.data_dependent, sources)
    mixture.set_tune(settings.tune)
    data = encode_mixture_data(relation, mixture, limits)
    training = settings.tune != "none"
    require_facts(data, ("train", "dev", "test") if training else ("test",))
    fitted: list[float] | None = None
    pruning = settings.top_k is not None and settings.top_k < len(mixture)
    if pruning and not data.splits["dev"]:
        raise SoftpromptError(f"relation {relation.name}: --top-k chooses prompts on dev data, which is empty")
    warmup = settings.prune_after if pruning and training else 0
    if warmup >= config.max_epochs:
        raise SoftpromptError(f"--prune-after {warmup} leaves no epoch to train the pruned mixture; give fewer "
                              f"epochs than --epochs {config.max_epochs}")
    identity = mixture_settings(lm, relation, settings, config, limits)
    run = RunDir(out, "softprompt mixture train")
    checkpoint_settings = {k: v for k, v in identity.items() if k != "train"}

    def fit(mixture: MixturePrompt, data: MixtureData, epochs: int, checkpoint: Path) -> FitResult:
        objective = MixtureObjective(engine, mixture, data.splits["train"], data.splits["dev"], settings.max_rows,
                                     settings.weights_lr, settings.sparse_k, settings.sparse_m, settings.sparse_draw,
                                     config.seed)
        optimizer = OPTIMIZERS[settings.method](replace(config, max_epochs=epochs), progress)
        return optimizer.fit(objective, checkpoint, resume, checkpoint_settings)

    # Pruning keeps every fact: each prompt of a mixture tokenises the answers alike.
    with run.open(identity | {"examples": {s: len(e) for s, e in data.splits.items()},
                              "dropped_multi_token": data.dropped, "prompt_set": asdict(report)}, resume):
        run.write_rows(DROPPED, data.dropped_facts)
        describe_inputs(data, report, run.path / DROPPED)
        warnings: list[str] = []
        warmed = fit(mixture, data, warmup, run.path / WARMUP) if warmup else None
        if pruning:
            chosen, fitted = select_prompts(engine, mixture, data.splits["dev"], settings.top_k, settings.max_rows,
                                            settings.selection)
            mixture = mixture.subset(chosen)
            data = encode_mixture_data(relation, mixture, limits)
        result: FitResult | None = None
        if training:
            result = fit(mixture, data, config.max_epochs - warmup, run.checkpoint)
            if warmed is not None:
                result = warmup_history(warmed, result, warmup)
            for message in result.warnings():
                warn(warnings, message)
        # A resumed run costs what its interrupted calls had checkpointed as well as this call's time.
        earlier = result.earlier_seconds if result is not None else 0.0
        fit_seconds = earlier + time.perf_counter() - started
        metrics, rows = evaluate_mixture(engine, mixture, data, "test", settings.max_rows)
        doc: dict[str, Any] = {
            "relation": relation.name, "prompts": settings.prompts, "mode": settings.mode, "method": settings.method,
            "tune": settings.tune, "data_dependent": settings.data_dependent, "test": metrics,
            "dropped_multi_token": data.dropped, "prompt_set": asdict(report), "num_prompts": len(mixture),
            "weights": mixture.weights(), "effective_prompts": effective_prompts(mixture.weights()),
            "temperature": mixture.temperature, "templates": [e.template.text for e in mixture.encoders],
            "sources": mixture.sources, "seconds": {"fit": fit_seconds,
                                                    "total": earlier + time.perf_counter() - started},
            "threads": torch.get_num_threads(), "warnings": warnings,
        }
        if fitted is not None:
            doc["selection_weights"] = fitted
        if result is not None:
            doc |= {"best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss, "history": result.history}
        return run.finish(doc, rows, mixture, {"relation": relation.name})


def describe_inputs(data: MixtureData, report: PromptSetReport, dropped: Path) -> None:
    """Say, before any training, which facts were dropped and which templates were reordered."""
    used = ", ".join(f"{split} {len(items)}" for split, items in data.splits.items())
    lost = ", ".join(f"{split} {n}" for split, n in data.dropped.items())
    log.info("facts used: %s; dropped because their answer is not a single token: %s (listed in %s)", used, lost,
             dropped)
    log.info("prompts: %d in the set, %d reordered to end in [Y], %d skipped, %d duplicates; %d used", report.total,
             report.reordered, report.skipped, report.duplicates, report.kept)
    for before, after in report.reorderings:
        log.info("reordered to end in [Y]: %r -> %r", before, after)


def mixture_settings(
    lm: LanguageModel, relation: Relation, settings: MixtureSettings, config: TrainConfig,
    limits: Mapping[str, int] | None,
) -> dict[str, Any]:
    """The entries of a mixture run's config.json that must be equal for it to be resumed or reused."""
    mixture = asdict(settings) | {"templates": list(settings.templates)}
    # Runs from before these options existed used their defaults: they stay resumable.
    if settings.selection == "weight":
        del mixture["selection"]
    if not settings.prune_after:
        del mixture["prune_after"]
    for key in ("sparse_k", "sparse_m"):
        if mixture[key] is None:
            del mixture[key]
    if settings.sparse_draw == "top":
        del mixture["sparse_draw"]
    return {"model": lm.name, "relation": relation.name, "mixture": mixture, "train": asdict(config),
            "limits": dict(limits or {})}
