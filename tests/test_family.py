"""Tests for the shape of the library: one prompt family (every kind saved and loaded alike, first-format
files still read), one optimizer interface, and one run-directory rule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from softprompt import distributed
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.optimizers import (
    EM,
    OPTIMIZERS,
    FitResult,
    GradientDescent,
    Optimizer,
    TrainConfig,
    select,
    warmup_history,
)
from softprompt.probing import AnswerObjective, Fact, Relation, encode_relation
from softprompt.prompts import (
    PROMPT_KINDS,
    DeepPrompt,
    HardPrompt,
    MixturePrompt,
    Prompt,
    SoftPrompt,
    TaskPrompt,
    load_prompt,
    read_prompt_file,
    stack_prompts,
)
from softprompt.runs import RunDir
from softprompt.templates import TemplateEncoder

TEMPLATES = ["The capital of [X] is [Y] .", "[X] has its capital in [Y] ."]
# Answers that are single tokens for the tiny test tokenizers.
RELATION = Relation("currency", TEMPLATES[0], {
    split: [Fact(country, "euro" if country in ("France", "Germany") else "yen") for country in countries]
    for split, countries in (("train", ["France", "Japan", "Germany", "Peru"]), ("dev", ["Chile", "Italy"]))
})


def every_kind(lm) -> dict[str, Prompt]:
    encoders = [TemplateEncoder(t, lm) for t in TEMPLATES]
    return {
        "hard": HardPrompt(encoders[0]),
        "soft": SoftPrompt(encoders[0], init="random", seed=3),
        "deep": DeepPrompt(encoders[1], init="random", seed=4),
        "mixture": MixturePrompt([TemplateEncoder(t, lm, answer_space=True) for t in TEMPLATES], "deep", "random",
                                 5, data_dependent=True),
        "task": TaskPrompt(lm, "hybrid", 3, tuning="deep", init="random", seed=6, task="capital"),
        "task-hard": TaskPrompt(lm, "hybrid-hard", 0, tuning="hard", task="capital"),
    }


def perturb(prompt: Prompt) -> Prompt:
    """Give every tensor a value no initialisation would, so that a round trip has something to keep."""
    with torch.no_grad():
        for i, t in enumerate(prompt.state_dict().values()):
            t.add_(0.01 * (i + 1))
    return prompt


def test_every_kind_is_registered_under_one_name(causal_lm):
    assert set(PROMPT_KINDS) == {"hard", "soft", "deep", "mixture", "task"}
    for name, prompt in every_kind(causal_lm).items():
        assert isinstance(prompt, Prompt)
        assert PROMPT_KINDS[prompt.kind] is type(prompt)
        assert prompt.metadata()["kind"] == name.removesuffix("-hard")


@pytest.mark.parametrize("name", ["hard", "soft", "deep", "mixture", "task", "task-hard"])
def test_every_kind_saves_and_loads_through_the_registry(name, causal_lm, tmp_path):
    prompt = perturb(every_kind(causal_lm)[name])
    prompt.save(tmp_path / "p.safetensors")
    loaded = load_prompt(tmp_path / "p.safetensors", causal_lm)
    assert type(loaded) is type(prompt) and loaded.metadata() == prompt.metadata()
    assert loaded.state_dict().keys() == prompt.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in prompt.state_dict().items())
    assert [p.shape for p in loaded.trainable_parameters()] == [p.shape for p in prompt.trainable_parameters()]


def as_first_format(path: Path) -> None:
    """Rewrite a prompt file's header as the first format wrote it: the kind under "mode", a mixture's
    components under "component_mode", a task prompt's soft/deep under "kind" (a hard one as "soft")."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["softprompt"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(path), metadata={"softprompt": json.dumps(first_format_header(meta))})


def first_format_header(meta: dict) -> dict:
    """A current prompt-file header as the first format wrote it."""
    old = {k: v for k, v in meta.items() if k not in ("kind", "component_kind", "tuning")}
    old |= {"format": "softprompt.prompt/1", "mode": meta["kind"]}
    if "component_kind" in meta:
        old["component_mode"] = meta["component_kind"]
    if "tuning" in meta:
        old["kind"] = "deep" if meta["tuning"] == "deep" else "soft"
    return old


@pytest.mark.parametrize("name", ["hard", "soft", "deep", "mixture", "task", "task-hard"])
def test_first_format_files_still_load(name, causal_lm, tmp_path):
    prompt = perturb(every_kind(causal_lm)[name])
    path = tmp_path / "p.safetensors"
    prompt.save(path)
    as_first_format(path)
    assert read_prompt_file(path)[0] == prompt.metadata()
    loaded = load_prompt(path, causal_lm)
    assert type(loaded) is type(prompt) and loaded.metadata() == prompt.metadata()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in prompt.state_dict().items())


def test_stack_prompts_lays_tables_end_to_end_with_zero_deltas_for_shallow_prompts(causal_lm):
    prompts = every_kind(causal_lm)
    hard, soft, deep = prompts["hard"], prompts["soft"], prompts["deep"]
    vectors, deltas, offsets = stack_prompts([hard, soft, deep])
    assert offsets == [0, hard.length, hard.length + soft.length]
    words = causal_lm.embed(torch.tensor(hard.word_ids()))
    assert torch.equal(vectors, torch.cat([words, soft.weight, deep.base]))
    assert deltas.shape == (causal_lm.num_layers + 1, hard.length + soft.length + deep.length, causal_lm.hidden_size)
    assert torch.equal(deltas[:, offsets[2]:], deep.delta) and not deltas[:, : offsets[2]].any()
    assert stack_prompts([hard, soft])[1] is None


def test_optimizers_register_and_em_needs_latent_choices(causal_lm):
    assert OPTIMIZERS["gradient"] is GradientDescent and OPTIMIZERS["em"] is EM and issubclass(EM, GradientDescent)
    data = encode_relation(RELATION, causal_lm)
    prompt = SoftPrompt(data.encoder)
    objective = AnswerObjective(Engine(causal_lm), prompt, data.splits["train"], data.splits["dev"], 8)
    with pytest.raises(SoftpromptError, match="EM needs an objective with latent choices"):
        EM(TrainConfig(max_epochs=1), progress=False).fit(objective)


def test_a_new_optimizer_is_one_class(causal_lm):
    """A search that never takes a gradient fits the same interface: here, keep the best of random restarts."""

    class RandomRestarts(Optimizer):
        name = "test-random-restarts"

        def fit(self, objective, checkpoint=None, resume=False, settings=None) -> FitResult:
            history, best = [], (objective.dev_loss(), objective.prompt.state_dict()["weight"].clone())
            for epoch in range(1, 4):
                with torch.no_grad():
                    objective.prompt.weight.normal_(generator=torch.Generator().manual_seed(epoch))
                history.append({"epoch": epoch, "dev_loss": objective.dev_loss()})
                if history[-1]["dev_loss"] < best[0]:
                    best = (history[-1]["dev_loss"], objective.prompt.state_dict()["weight"].clone())
            objective.prompt.load_state_dict({"weight": best[1]})
            return FitResult(objective.prompt, 0, best[0], history)

    try:
        assert OPTIMIZERS["test-random-restarts"] is RandomRestarts
        data = encode_relation(RELATION, causal_lm)
        objective = AnswerObjective(Engine(causal_lm), SoftPrompt(data.encoder), data.splits["train"],
                                    data.splits["dev"], 8)
        result = RandomRestarts().fit(objective)
        assert result.best_dev_loss == pytest.approx(objective.dev_loss())
        assert result.best_dev_loss <= min(h["dev_loss"] for h in result.history)
    finally:
        del OPTIMIZERS["test-random-restarts"]


def test_selection_on_a_hand_made_likelihood_matrix():
    tiny = -69.0  # log 1e-30
    # Prompts 0 and 1 each explain half the facts; prompt 2 explains all of them, with probability 0.37 each.
    # The best mixture weighs 0 and 1 equally (2 log 0.5 > 2 log 0.37), while the best single prompt is 2.
    gold = torch.tensor([[0.0, tiny, -1.0], [0.0, tiny, -1.0], [tiny, 0.0, -1.0], [tiny, 0.0, -1.0]])
    assert select(gold, 2, "weight")[0] == [0, 1]
    assert select(gold, 1, "greedy")[0] == [2]
    with pytest.raises(SoftpromptError, match="unknown prompt selection 'best'"):
        select(gold, 1, "best")


def test_warmup_history_continues_the_epoch_count(causal_lm):
    prompt = SoftPrompt(TemplateEncoder(TEMPLATES[0], causal_lm))
    warmed = FitResult(prompt, 1, 2.0, [{"epoch": 0, "dev_loss": 3.0}, {"epoch": 1, "dev_loss": 2.0}], 5.0)
    pruned = FitResult(prompt, 1, 1.5, [{"epoch": 0, "dev_loss": 2.5}, {"epoch": 1, "dev_loss": 1.5}], 7.0)
    joined = warmup_history(warmed, pruned, 1)
    assert joined.best_epoch == 2 and joined.best_dev_loss == 1.5 and joined.earlier_seconds == 12.0
    assert joined.history == [{"epoch": 0, "dev_loss": 3.0}, {"epoch": 1, "dev_loss": 2.0},
                              {"epoch": 1, "pruned_dev_loss": 2.5}, {"epoch": 2, "dev_loss": 1.5}]


def test_run_directory_rule(tmp_path):
    run = RunDir(tmp_path / "run", "softprompt probe train")
    run.prepare()  # nothing there yet
    with run.open({"model": "m", "lr": 0.1}):
        run.checkpoint.write_bytes(b"x")
    with pytest.raises(SoftpromptError, match="interrupted training run; continue it with softprompt probe train "
                                              "--resume"):
        run.prepare()
    run.prepare(resume=True, settings={"model": "m", "lr": 0.1})
    with pytest.raises(SoftpromptError, match=r"started with other settings \(lr\)"):
        run.prepare(resume=True, settings={"model": "m", "lr": 0.2})
    run.prepare(force=True, settings={"model": "m", "lr": 0.2})
    with run.open({"model": "m", "lr": 0.1}, resume=True):
        first_id = run.run_id[0]
        written = run.finish({"p@1": 1.0}, [{"a": 1}])
    assert run.finished and run.metrics() == written == {"p@1": 1.0, "run_id": first_id}
    assert (run.path / "predictions.jsonl").read_text() == '{"a": 1}\n'
    with pytest.raises(SoftpromptError, match="already holds a finished run"):
        run.prepare()
    (tmp_path / "file").write_text("")
    with pytest.raises(SoftpromptError, match="is a file"):
        RunDir(tmp_path / "file").prepare(force=True)
    (run.path / "config.json").write_text("{not json")
    with pytest.raises(SoftpromptError, match="cannot read it"):
        run.changed({"model": "m"})


def test_runs_record_their_precision_and_resume_only_in_it(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run", "softprompt probe train")
    with run.open({"lr": 0.1}):
        run.checkpoint.write_bytes(b"x")
    assert json.loads((run.path / "config.json").read_text())["precision"] == "fp32"
    run.prepare(resume=True, settings={"lr": 0.1})
    monkeypatch.setattr(distributed, "_ACTIVE", ["fp32", "bf16"])  # inside a bf16 block (which needs a GPU)
    with pytest.raises(SoftpromptError, match=r"started with other settings \(precision\)"):
        run.prepare(resume=True)
    with run.open({"lr": 0.1}):
        pass
    assert json.loads((run.path / "config.json").read_text())["precision"] == "bf16"
    monkeypatch.setattr(distributed, "_ACTIVE", ["fp32"])
    config = json.loads((run.path / "config.json").read_text())
    del config["precision"]  # a run from before precisions were recorded computed in fp32
    (run.path / "config.json").write_text(json.dumps(config))
    assert run.changed({"lr": 0.1}) == []


def test_a_new_run_clears_the_old_one_first_and_readers_refuse_mixed_files(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.open({"lr": 0.1}):
        run.checkpoint.write_bytes(b"old")
        (run.path / ".prompt.safetensors.abc.tmp").write_bytes(b"left by a kill")
        run.finish({"p@1": 0.5}, [{"old": True}])
    removed = []
    real_unlink = Path.unlink

    def unlink(path, missing_ok=False):
        removed.append(path.name)
        real_unlink(path, missing_ok=missing_ok)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "unlink", unlink)
        with run.open({"lr": 0.2}):
            # The finished marker goes first, the old identity last: a kill in between never shows old results
            # as finished next to new settings.
            assert removed[0] == ".prompt.safetensors.abc.tmp"  # a killed writer's leftovers go in any case
            assert removed[1] == "metrics.json"
            assert removed.index("config.json") > removed.index("checkpoint.safetensors")
            assert sorted(p.name for p in run.path.iterdir()) == [".lock", "config.json"]
            new_id = run.run_id[0]
    assert json.loads((run.path / "config.json").read_text()) == {"lr": 0.2, "precision": "fp32", "run_id": new_id}
    # A directory whose metrics.json is from another run (an overwrite that was interrupted by an older version).
    (run.path / "metrics.json").write_text(json.dumps({"p@1": 1.0, "run_id": "someone-else"}))
    with pytest.raises(SoftpromptError, match=r"metrics\.json and config\.json belong to different runs; rerun it "
                                              "with --force"):
        run.metrics()


def test_a_run_directory_has_one_writer_at_a_time(tmp_path):
    run, other = RunDir(tmp_path / "run"), RunDir(tmp_path / "run")
    with run.open({"lr": 0.1}):
        with pytest.raises(SoftpromptError, match=rf"{run.path} is in use by another run \(process {os.getpid()}\)"):
            other.prepare()
        with pytest.raises(SoftpromptError, match="is in use by another run"), other.open({"lr": 0.2}):
            pass
        assert json.loads((run.path / "config.json").read_text())["lr"] == 0.1  # the second run wrote nothing
    with other.open({"lr": 0.2}):  # released when the first run ends
        pass
