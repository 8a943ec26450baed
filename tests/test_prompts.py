"""Tests for softprompt.prompts: initialisation, the prompt file format, and loading checks."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_causal
from safetensors import safe_open
from safetensors.torch import save_file

import softprompt.prompts.base as base
import softprompt.prompts.soft as soft
from softprompt.errors import SoftpromptError
from softprompt.prompts import DeepPrompt, HardPrompt, SoftPrompt, load_prompt, read_prompt_file
from softprompt.prompts.soft import EmbeddingGaussian, embedding_gaussian
from softprompt.templates import TemplateEncoder

TEMPLATE = "The capital of [X] is [Y] ."


@pytest.fixture
def encoder(causal_lm):
    return TemplateEncoder(TEMPLATE, causal_lm)


def test_template_init_is_the_template_embeddings(encoder, causal_lm):
    """init="template" starts from the embeddings of the template's own tokens."""
    prompt = SoftPrompt(encoder, init="template")
    expected = causal_lm.embed(torch.tensor(encoder.prompt_ids))
    assert torch.equal(prompt.weight.detach(), expected)
    assert prompt.weight.requires_grad


def test_random_init_shape_and_seeding(encoder, causal_lm):
    """init="random" gives (P, d) float vectors, the same for a seed and different across seeds."""
    a = SoftPrompt(encoder, init="random", seed=0).weight.detach()
    assert a.shape == (len(encoder.prompt_ids), causal_lm.hidden_size)
    assert a.dtype == torch.float32
    assert torch.equal(a, SoftPrompt(encoder, init="random", seed=0).weight.detach())
    assert not torch.allclose(a, SoftPrompt(encoder, init="random", seed=1).weight.detach())
    assert not torch.allclose(a, SoftPrompt(encoder, init="template").weight.detach())
    deep = DeepPrompt(encoder, init="random", seed=0)
    assert torch.equal(deep.base, a)
    assert deep.delta.shape == (causal_lm.num_layers + 1, *a.shape)


def test_unknown_init_is_an_error(encoder):
    with pytest.raises(SoftpromptError, match="unknown prompt init 'zeros'"):
        SoftPrompt(encoder, init="zeros")


def test_embedding_gaussian_matches_a_known_distribution():
    """The fitted Gaussian has the matrix's mean and covariance, and its samples reproduce them."""
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    mix = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0], [0.0, -0.5, 0.3, 0.0], [0.2, 0.0, 0.1, 2.0]],
        dtype=torch.float64,
    )
    cov = mix @ mix.T
    matrix = mean + torch.randn(20000, 4, generator=gen, dtype=torch.float64) @ mix.T
    gaussian = EmbeddingGaussian(matrix.float())
    assert torch.allclose(gaussian.mean, matrix.float().double().mean(0), atol=1e-6)
    assert torch.allclose(gaussian.scale @ gaussian.scale.T, torch.cov(matrix.float().double().T), atol=1e-5)
    samples = gaussian.sample(40000, seed=1).double()
    assert samples.dtype == torch.float64 and samples.shape == (40000, 4)
    assert torch.allclose(samples.mean(0), mean, atol=0.05)
    assert torch.allclose(torch.cov(samples.T), cov, atol=0.08)
    assert torch.equal(gaussian.sample(3, seed=1), gaussian.sample(3, seed=1))


def test_random_draws_follow_the_model_embeddings(causal_lm):
    """Many random-init draws have about the embedding matrix's per-dimension mean and std."""
    embeddings = causal_lm.embedding_matrix.detach()
    samples = embedding_gaussian(causal_lm).sample(20000, seed=0)
    assert samples.shape == (20000, causal_lm.hidden_size)
    std = embeddings.std(0)
    assert ((samples.mean(0) - embeddings.mean(0)).abs() < 0.1 * std).all()
    assert ((samples.std(0) / std - 1).abs() < 0.05).all()


def test_gaussian_cache_is_per_model(monkeypatch):
    """The fitted Gaussian is cached per model object, not per id(): a freed model's id can be reused."""
    monkeypatch.setattr(soft, "id", lambda _obj: 0, raising=False)  # as if the two models shared an id
    small, big = tiny_causal(hidden=32), tiny_causal(hidden=64)
    assert embedding_gaussian(small) is embedding_gaussian(small)
    assert embedding_gaussian(small).mean.shape == (32,)
    assert embedding_gaussian(big).mean.shape == (64,)
    assert SoftPrompt(TemplateEncoder(TEMPLATE, big), init="random").weight.shape[1] == 64


def make_prompts(encoder):
    soft = SoftPrompt(encoder, init="random", seed=4)
    deep = DeepPrompt(encoder, init="template")
    with torch.no_grad():
        deep.delta.copy_(torch.randn(deep.delta.shape, generator=torch.Generator().manual_seed(9)))
    return {"hard": HardPrompt(encoder), "soft": soft, "deep": deep}


@pytest.mark.parametrize("mode", ["hard", "soft", "deep"])
def test_save_load_round_trip(mode, encoder, causal_lm, tmp_path):
    """Saving and loading reproduces the prompt's tensors exactly and its metadata."""
    prompt = make_prompts(encoder)[mode]
    path = tmp_path / "prompt.safetensors"
    prompt.save(path, extra={"relation": "capital"})
    loaded = load_prompt(path, causal_lm)
    assert type(loaded) is type(prompt)
    assert loaded.kind == mode and loaded.template == TEMPLATE and loaded.init == prompt.init
    assert loaded.state_dict().keys() == prompt.state_dict().keys()
    for key, value in prompt.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    for a, b in [(loaded.vectors(), prompt.vectors()), (loaded.deltas(), prompt.deltas())]:
        assert (a is None and b is None) or torch.equal(a, b)
    meta, _ = read_prompt_file(path)
    assert meta["kind"] == mode
    assert meta["template"] == TEMPLATE
    assert meta["init"] == {"hard": "template", "soft": "random", "deep": "template"}[mode]
    assert meta["model"] == causal_lm.name
    assert meta["hidden_size"] == causal_lm.hidden_size == 32
    assert meta["num_layers"] == causal_lm.num_layers == 2
    assert meta["prompt_token_ids"] == list(encoder.prompt_ids)
    assert meta["relation"] == "capital"
    # A run directory can be given instead of the file.
    from_dir = load_prompt(tmp_path, causal_lm)
    assert all(torch.equal(from_dir.state_dict()[k], v) for k, v in prompt.state_dict().items())


@pytest.mark.parametrize("mode", ["hard", "soft", "deep"])
def test_prompt_file_is_safetensors_with_json_metadata(mode, encoder, tmp_path):
    """The file opens with safetensors; its "softprompt" metadata entry is JSON with the format tag."""
    path = tmp_path / "p.safetensors"
    make_prompts(encoder)[mode].save(path)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["softprompt"])
        keys = set(f.keys())
    assert meta["format"] == "softprompt.prompt/2"
    assert keys == {"hard": {"empty"}, "soft": {"weight"}, "deep": {"base", "delta"}}[mode]


def test_prompt_for_another_hidden_size_is_refused(encoder, tmp_path):
    """A prompt trained for a hidden-size-32 model cannot be loaded into a hidden-size-64 model."""
    path = tmp_path / "p.safetensors"
    SoftPrompt(encoder).save(path)
    with pytest.raises(SoftpromptError, match="hidden size") as info:
        load_prompt(path, tiny_causal(hidden=64))
    assert "32" in str(info.value) and "64" in str(info.value)


def test_deep_prompt_for_another_depth_is_refused(encoder, tmp_path):
    """A deep prompt has one delta per layer: a model with another number of layers is refused."""
    path = tmp_path / "p.safetensors"
    DeepPrompt(encoder).save(path)
    with pytest.raises(SoftpromptError, match="3"):
        load_prompt(path, tiny_causal(layers=3))


def test_non_prompt_files_are_refused(causal_lm, tmp_path):
    """Missing files, non-safetensors files and safetensors without prompt metadata give SoftpromptError."""
    with pytest.raises(SoftpromptError, match="not found"):
        load_prompt(tmp_path / "missing.safetensors", causal_lm)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, not a tensor file")
    with pytest.raises(SoftpromptError, match="not a softprompt prompt file"):
        load_prompt(text, causal_lm)
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2, 32)}, str(plain))
    with pytest.raises(SoftpromptError, match="not a softprompt prompt file"):
        load_prompt(plain, causal_lm)
    other = tmp_path / "other.safetensors"
    metadata = {"softprompt": json.dumps({"format": "x/9"})}
    save_file({"weight": torch.zeros(2, 32)}, str(other), metadata=metadata)
    with pytest.raises(SoftpromptError, match="unsupported prompt format"):
        load_prompt(other, causal_lm)


def test_save_leaves_no_temporary_files(encoder, tmp_path):
    """After saving (and overwriting) the directory holds just the prompt file."""
    path = tmp_path / "prompt.safetensors"
    for prompt in make_prompts(encoder).values():
        prompt.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["prompt.safetensors"]


def test_failed_save_keeps_the_old_file(encoder, causal_lm, tmp_path, monkeypatch):
    """If serialisation fails half-way, the previous prompt file is untouched and no temp file remains."""
    path = tmp_path / "prompt.safetensors"
    old = SoftPrompt(encoder, init="random", seed=1)
    old.save(path)
    before = path.read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a header")
        raise RuntimeError("disk full")

    monkeypatch.setattr(base, "save_file", broken_save_file)
    with pytest.raises(RuntimeError, match="disk full"):
        SoftPrompt(encoder, init="random", seed=2).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["prompt.safetensors"]
    monkeypatch.undo()
    assert torch.equal(load_prompt(path, causal_lm).weight, old.weight)
