"""Sweeps on Ray Tune (``softprompt sweep``) and the per-epoch observer they report through."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from softprompt.optimizers import TrainConfig
from softprompt.optimizers.gradient import observe_epochs
from softprompt.probing import Fact, Relation, run_probe

FACTS = {"train": [("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Italy", "Rome")],
         "dev": [("Spain", "Madrid"), ("Egypt", "Cairo")], "test": [("Peru", "Lima"), ("Kenya", "Europe")]}


def test_observers_see_every_epoch_after_its_checkpoint(causal_lm, tmp_path: Path) -> None:
    """Each finished epoch reaches the observers with the run's history entry and best-so-far, after the epoch's
    checkpoint is on disk; outside the block nothing is observed."""
    relation = Relation("capital", "the capital of [X] is [Y] .",
                        {split: [Fact(*fact) for fact in facts] for split, facts in FACTS.items()})
    out = tmp_path / "run"
    seen: list[dict] = []

    def observe(record: dict) -> None:
        with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
            stored = json.loads(f.metadata()["softprompt.checkpoint"])["state"]
        seen.append(record | {"checkpointed": stored["epoch"]})

    config = TrainConfig(lr=0.05, batch_size=2, max_epochs=3, patience=3)
    with observe_epochs(observe), observe_epochs(lambda record: seen.append({"inner": record["epoch"]})):
        doc = run_probe(causal_lm, relation, out, config=config, progress=False)
    run_probe(causal_lm, relation, tmp_path / "unobserved", config=config, progress=False)
    inner = [s for s in seen if "inner" in s]
    outer = [s for s in seen if "inner" not in s]
    assert [s["inner"] for s in inner] == [1, 2, 3]
    history = doc["history"][1:]
    assert [{k: s[k] for k in ("epoch", "train_loss", "dev_loss")} for s in outer] == history
    assert [s["checkpointed"] for s in outer] == [1, 2, 3]
    assert outer[-1]["best_dev_loss"] == doc["best_dev_loss"] and outer[-1]["best_epoch"] == doc["best_epoch"]
    assert all(s["best_dev_loss"] == min(h["dev_loss"] for h in doc["history"][: s["epoch"] + 1]) for s in outer)
