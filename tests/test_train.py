"""Tests for softprompt.train: learning, frozen weights, exact resumption, early stopping, validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

import softprompt.probing.objective as train_module
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.optimizers import TrainConfig
from softprompt.probing import mean_loss, train_prompt
from softprompt.prompts import DeepPrompt, HardPrompt, SoftPrompt
from softprompt.templates import TemplateEncoder

TEMPLATE = "[X] is [Y] ."
# The answer is a function of the subject's first word: a currency shared by half of the countries.
EURO = ["France", "Germany", "Italy", "Spain"]
YEN = ["Japan", "Peru", "Chile", "Egypt"]
TRAIN_SECOND = ["Mozart", "Einstein", "Curie", "Bach", "Newton"]
DEV_SECOND = ["city", "language"]


def facts(seconds):
    return [(f"{a} {b}", "euro" if a in EURO else "yen") for a in EURO + YEN for b in seconds]


@pytest.fixture(scope="module")
def task(causal_lm):
    encoder = TemplateEncoder(TEMPLATE, causal_lm)
    train = [encoder.encode(s, a) for s, a in facts(TRAIN_SECOND)]
    dev = [encoder.encode(s, a) for s, a in facts(DEV_SECOND)]
    assert len(train) == 40 and len(dev) == 16 and None not in train + dev
    return Engine(causal_lm), encoder, train, dev


def model_snapshot(lm):
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def assert_model_untouched(lm, snapshot):
    state = lm.model.state_dict()
    assert state.keys() == snapshot.keys()
    assert all(torch.equal(state[k], snapshot[k]) for k in snapshot)
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert all(p.grad is None for p in lm.model.parameters())


def test_soft_prompt_training_learns_and_leaves_model_frozen(task, causal_lm):
    """Training lowers dev loss, changes only the prompt, and returns the best epoch's parameters."""
    engine, encoder, train, dev = task
    snapshot = model_snapshot(causal_lm)
    prompt = SoftPrompt(encoder)
    initial = prompt.weight.detach().clone()
    config = TrainConfig(lr=0.05, batch_size=8, max_epochs=4, patience=4)
    result = train_prompt(engine, prompt, train, dev, config, progress=False)
    history = result.history
    assert [h["epoch"] for h in history] == list(range(len(history)))
    assert history[0]["dev_loss"] == mean_loss(engine, SoftPrompt(encoder), dev, 256)
    assert result.best_epoch > 0
    assert history[result.best_epoch]["dev_loss"] < history[0]["dev_loss"]
    assert result.best_dev_loss == min(h["dev_loss"] for h in history)
    assert mean_loss(engine, prompt, dev, config.eval_batch_size) == result.best_dev_loss
    assert not torch.equal(prompt.weight.detach(), initial)
    assert_model_untouched(causal_lm, snapshot)


def test_deep_prompt_training_changes_only_deltas(task, causal_lm):
    """A deep prompt learns its perturbations; its base vectors and the model stay fixed."""
    engine, encoder, train, dev = task
    snapshot = model_snapshot(causal_lm)
    prompt = DeepPrompt(encoder)
    base = prompt.base.clone()
    assert [name for name, p in prompt.named_parameters() if p.requires_grad] == ["delta"]
    result = train_prompt(engine, prompt, train, dev, TrainConfig(lr=0.02, batch_size=8, max_epochs=3),
                          progress=False)
    assert result.best_dev_loss < result.history[0]["dev_loss"]
    assert torch.equal(prompt.base, base)
    assert prompt.delta.detach().abs().sum() > 0
    assert_model_untouched(causal_lm, snapshot)


def test_hard_prompt_cannot_be_trained(task):
    engine, encoder, train, dev = task
    with pytest.raises(SoftpromptError, match="no trainable parameters"):
        train_prompt(engine, HardPrompt(encoder), train, dev, TrainConfig(), progress=False)


def read_checkpoint(path):
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["softprompt.checkpoint"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return meta, tensors


@pytest.mark.parametrize("mode", ["soft", "deep"])
def test_resumed_run_equals_uninterrupted_run(mode, task, tmp_path, monkeypatch):
    """A run killed during epoch 3 and resumed from its checkpoint ends bit-identical to a straight run."""
    engine, encoder, train, dev = task
    make = {"soft": SoftPrompt, "deep": DeepPrompt}[mode]
    config = TrainConfig(lr=0.03, batch_size=8, max_epochs=5, patience=5, seed=3)

    straight = make(encoder)
    result_a = train_prompt(engine, straight, train, dev, config, checkpoint=tmp_path / "a.st",
                            progress=False)

    calls = []

    def crashing_mean_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # initial loss, epochs 1 and 2, then crash after training epoch 3
            raise KeyboardInterrupt
        return mean_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "mean_loss", crashing_mean_loss)
    with pytest.raises(KeyboardInterrupt):
        train_prompt(engine, make(encoder), train, dev, config, checkpoint=tmp_path / "b.st", progress=False)
    monkeypatch.undo()
    meta, _ = read_checkpoint(tmp_path / "b.st")
    assert meta["state"]["epoch"] == 2

    resumed = make(encoder)
    result_b = train_prompt(engine, resumed, train, dev, config, checkpoint=tmp_path / "b.st", resume=True,
                            progress=False)
    assert result_b.history == result_a.history
    assert len(result_a.history) == config.max_epochs + 1
    assert (result_b.best_epoch, result_b.best_dev_loss) == (result_a.best_epoch, result_a.best_dev_loss)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value)
    # The last-epoch prompt and the optimiser state agree too, not just the best prompt.
    meta_a, tensors_a = read_checkpoint(tmp_path / "a.st")
    meta_b, tensors_b = read_checkpoint(tmp_path / "b.st")
    seconds_b = meta_b["state"].pop("seconds")  # wall-clock time: the one thing allowed to differ
    assert meta_a["state"].pop("seconds") > 0 and seconds_b > 0
    assert result_a.earlier_seconds == 0 and 0 < result_b.earlier_seconds < seconds_b
    assert meta_a == meta_b
    assert tensors_a.keys() == tensors_b.keys()
    assert any(k.startswith("optim.") for k in tensors_a)
    assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.st", "b.st"]


def test_resume_with_other_settings_is_refused(task, tmp_path):
    """A checkpoint only resumes under the settings it was written with."""
    engine, encoder, train, dev = task
    path = tmp_path / "ckpt.safetensors"
    config = TrainConfig(lr=0.01, batch_size=8, max_epochs=1)
    train_prompt(engine, SoftPrompt(encoder), train, dev, config, checkpoint=path, progress=False)
    other = TrainConfig(lr=0.02, batch_size=8, max_epochs=1)
    with pytest.raises(SoftpromptError, match="resume with the same settings"):
        train_prompt(engine, SoftPrompt(encoder), train, dev, other, checkpoint=path, resume=True,
                     progress=False)


def test_resume_without_checkpoint_starts_afresh(task, tmp_path):
    """resume=True with no checkpoint yet simply trains from the start."""
    engine, encoder, train, dev = task
    config = TrainConfig(lr=0.01, batch_size=16, max_epochs=1)
    a, b = SoftPrompt(encoder), SoftPrompt(encoder)
    ra = train_prompt(engine, a, train, dev, config, progress=False)
    rb = train_prompt(engine, b, train, dev, config, checkpoint=tmp_path / "c.st", resume=True,
                      progress=False)
    assert ra.history == rb.history
    assert torch.equal(a.weight, b.weight)


def test_early_stopping_after_patience_epochs_without_improvement(task, monkeypatch):
    """With patience 3, training stops 3 epochs after the best one (a tie is no improvement), keeping it."""
    engine, encoder, train, dev = task
    losses = iter([5.0, 4.0, 3.0, 3.5, 3.0, 3.2, 1.0, 0.5])
    seen = []

    def scripted_mean_loss(engine, prompt, examples, batch_size):
        seen.append(prompt.weight.detach().clone())
        return next(losses)

    monkeypatch.setattr(train_module, "mean_loss", scripted_mean_loss)
    prompt = SoftPrompt(encoder)
    config = TrainConfig(lr=0.05, batch_size=8, max_epochs=20, patience=3)
    result = train_prompt(engine, prompt, train, dev, config, progress=False)
    assert [h["dev_loss"] for h in result.history] == [5.0, 4.0, 3.0, 3.5, 3.0, 3.2]
    assert (result.best_epoch, result.best_dev_loss) == (2, 3.0)
    assert len(seen) == 6
    assert torch.equal(prompt.weight, seen[2])
    assert not torch.equal(seen[5], seen[2])
    assert result.warnings() == []  # stopped by patience: nothing left undone


def test_a_best_last_epoch_warns_that_training_stopped_too_early(task, monkeypatch):
    """Dev loss still falling when the epoch limit ends training: the result says to train longer."""
    engine, encoder, train, dev = task
    losses = iter([5.0, 4.0, 3.0, 2.0])
    monkeypatch.setattr(train_module, "mean_loss", lambda *args: next(losses))
    config = TrainConfig(lr=0.05, batch_size=8, max_epochs=3, patience=2)
    result = train_prompt(engine, SoftPrompt(encoder), train, dev, config, progress=False)
    assert result.best_epoch == 3
    assert result.warnings() == ["the best dev loss came at the last epoch (3): the prompt was still improving when "
                                 "training stopped; train for more epochs (--epochs) or with a higher learning rate "
                                 "(--lr)"]


def test_no_improvement_keeps_the_initial_prompt(task, monkeypatch):
    """If no epoch beats the initial dev loss, the initial prompt is returned and best_epoch is 0."""
    engine, encoder, train, dev = task
    monkeypatch.setattr(train_module, "mean_loss", lambda *args: 1.0)
    prompt = SoftPrompt(encoder)
    initial = prompt.weight.detach().clone()
    config = TrainConfig(lr=0.05, batch_size=8, max_epochs=9, patience=2)
    result = train_prompt(engine, prompt, train, dev, config, progress=False)
    assert (result.best_epoch, len(result.history)) == (0, 3)
    assert torch.equal(prompt.weight, initial)
    assert result.warnings() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0}, "learning rate must be a positive number"),
        ({"lr": -1e-3}, "learning rate must be a positive number"),
        ({"lr": math.nan}, "learning rate must be a positive number"),
        ({"lr": math.inf}, "learning rate must be a positive number"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"max_epochs": 0}, "max_epochs must be at least 1"),
        ({"patience": -1}, "patience must be at least 1"),
        ({"eval_batch_size": 0}, "eval_batch_size must be at least 1"),
    ],
)
def test_train_config_validation(kwargs, message):
    with pytest.raises(SoftpromptError, match=message):
        TrainConfig(**kwargs)


def test_empty_splits_are_refused(task):
    """Training needs both training and dev examples, and says which one is missing."""
    engine, encoder, train, dev = task
    with pytest.raises(SoftpromptError, match="training split is empty"):
        train_prompt(engine, SoftPrompt(encoder), [], dev, TrainConfig(), progress=False)
    with pytest.raises(SoftpromptError, match="dev split is empty"):
        train_prompt(engine, SoftPrompt(encoder), train, [], TrainConfig(), progress=False)


def test_mean_loss_is_the_mean_cross_entropy(task):
    """mean_loss is the average negative log-probability of the gold answers, independent of batching."""
    engine, encoder, _, dev = task
    prompt = SoftPrompt(encoder, init="random")
    with torch.no_grad():
        logits = torch.cat([engine.answer_logits(engine.collate([e]), prompt.vectors()) for e in dev])
    expected = -logits.log_softmax(-1)[torch.arange(len(dev)), [e.answer_id for e in dev]].mean().item()
    for batch_size in (1, 5, 100):
        assert mean_loss(engine, prompt, dev, batch_size) == pytest.approx(expected, rel=1e-5)


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(task, tmp_path, monkeypatch):
    """A loss or prompt that turns non-finite stops training with a clear error; the checkpoint of the last
    finished epoch stays as it was."""
    engine, encoder, train, dev = task
    config = TrainConfig(lr=0.05, batch_size=8, max_epochs=3, patience=3)
    checkpoint = tmp_path / "ck.safetensors"
    real = train_module.backward_answer_loss
    steps = {"n": 0}

    def poisoned(engine, prompt, batch):  # the 7th step (in epoch 2) returns NaN
        steps["n"] += 1
        return real(engine, prompt, batch) if steps["n"] != 7 else float("nan")

    monkeypatch.setattr(train_module, "backward_answer_loss", poisoned)
    with pytest.raises(SoftpromptError, match=r"diverged in epoch 2 \(a training loss of nan\); the checkpoint of "
                                              r"epoch 1, the last good one, is kept"):
        train_prompt(engine, SoftPrompt(encoder), train, dev, config, checkpoint=checkpoint, progress=False)
    with safe_open(str(checkpoint), framework="pt") as f:
        assert json.loads(f.metadata()["softprompt.checkpoint"])["state"]["epoch"] == 1
        assert all(f.get_tensor(k).isfinite().all() for k in f.keys())  # noqa: SIM118
    def blown_up(engine, prompt, batch):  # the 3rd step leaves the prompt at infinity, as too large a step would
        steps["n"] += 1
        loss = real(engine, prompt, batch)
        if steps["n"] == 3:
            with torch.no_grad():
                prompt.weight[0, 0] = float("inf")
        return loss

    steps["n"] = 0
    monkeypatch.setattr(train_module, "backward_answer_loss", blown_up)
    with pytest.raises(SoftpromptError, match=r"diverged in epoch 1 \(non-finite prompt parameters\); start over"):
        train_prompt(engine, SoftPrompt(encoder), train, dev, config, progress=False)
    monkeypatch.setattr(train_module, "backward_answer_loss", real)
    nan_prompt = SoftPrompt(encoder)
    with torch.no_grad():
        nan_prompt.weight.fill_(float("nan"))
    with pytest.raises(SoftpromptError, match="the initial prompt's dev loss is nan"):
        train_prompt(engine, nan_prompt, train, dev, config, progress=False)
