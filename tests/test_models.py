"""Tests for softprompt.models: loading local models frozen, model kinds, and loading errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import byte_bpe_tokenizer, tiny_causal
from transformers import BertConfig, GPT2Config, LlamaConfig, PretrainedConfig

from softprompt.errors import SoftpromptError
from softprompt.models import BUNDLED_MODELS, DEFAULT_MODEL, LanguageModel, _kind_of, cache_dir, load_model


@pytest.mark.parametrize(("name", "kind", "hidden"), [("causal", "causal", 32), ("masked", "masked", 32),
                                                      ("causal64", "causal", 64)])
def test_load_local_directory_frozen(name, kind, hidden, model_dirs, isolated_cache):
    """A saved model directory loads with the right kind and shape, in eval mode with no trainable weight."""
    lm = load_model(str(model_dirs[name]))
    assert lm.kind == kind
    assert lm.name == str(model_dirs[name])
    assert (lm.hidden_size, lm.num_layers, lm.vocab_size) == (hidden, 2, len(lm.tokenizer))
    assert not lm.model.training
    assert all(not m.training for m in lm.model.modules())
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.tokenizer.pad_token_id is not None
    assert lm.layers is (lm.model.model.layers if kind == "causal" else lm.model.bert.encoder.layer)
    assert not isolated_cache.exists()  # local directories are used in place, not converted


def test_loaded_weights_equal_the_saved_model(model_dirs, isolated_cache, causal_lm):
    """Loading from disk gives back the very weights that were saved."""
    loaded = load_model(str(model_dirs["causal"])).model.state_dict()
    saved = causal_lm.model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_kind_can_be_forced(model_dirs, isolated_cache):
    lm = load_model(str(model_dirs["masked"]), kind="masked")
    assert lm.kind == "masked"


def test_gguf_is_converted_once_into_the_cache(tmp_path, isolated_cache, monkeypatch, causal_lm):
    """A .gguf file is converted on first load only; a changed file gets a fresh conversion."""
    import softprompt.models as models

    conversions = []

    def fake_convert(path, target):
        conversions.append(target)
        causal_lm.model.save_pretrained(target)
        causal_lm.tokenizer.save_pretrained(target)

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF v1")
    first = load_model(str(gguf))
    second = load_model(str(gguf))
    assert len(conversions) == 1
    assert conversions[0].parent == isolated_cache / "models" and conversions[0].name.startswith("tiny-")
    assert first.kind == second.kind == "causal" and first.name == str(gguf)
    pairs = zip(first.model.parameters(), second.model.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    gguf.write_bytes(b"GGUF v2, longer")
    load_model(str(gguf))
    assert len(conversions) == 2 and conversions[1] != conversions[0]


def test_unknown_model_name(isolated_cache):
    """An unknown model name is a SoftpromptError that repeats the name and lists what is accepted."""
    with pytest.raises(SoftpromptError, match="unknown model 'no-such-model-xyz'") as info:
        load_model("no-such-model-xyz")
    assert DEFAULT_MODEL in str(info.value)


def test_missing_local_directory_is_unknown(tmp_path, isolated_cache):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(SoftpromptError, match="unknown model") as info:
        load_model(missing)
    assert missing in str(info.value)


def test_missing_gguf_file(tmp_path, isolated_cache):
    """A .gguf path that does not exist is reported as such, with its path."""
    path = tmp_path / "model.gguf"
    with pytest.raises(SoftpromptError, match="model file not found") as info:
        load_model(str(path))
    assert str(path) in str(info.value)
    assert not isolated_cache.exists()


def test_bundled_model_not_installed(monkeypatch, isolated_cache):
    """The bundled alias without its package says how to install it."""
    package, install = BUNDLED_MODELS[DEFAULT_MODEL]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(SoftpromptError, match="is not installed") as info:
        load_model(DEFAULT_MODEL)
    assert install in str(info.value)


def test_cache_dir_follows_environment(isolated_cache):
    assert cache_dir() == isolated_cache


def test_pad_token_falls_back_to_eos():
    """A tokenizer without a pad token gets its eos token as padding; with neither, a clear error."""
    model = tiny_causal().model
    tok = byte_bpe_tokenizer()
    tok.pad_token = None
    assert tok.pad_token_id is None
    lm = LanguageModel(model, tok, name="no-pad", kind="causal")
    assert lm.tokenizer.pad_token == "<eos>"
    bare = byte_bpe_tokenizer()
    bare.pad_token = None
    bare.eos_token = None
    with pytest.raises(SoftpromptError, match="no pad, eos or unk token"):
        LanguageModel(model, bare, name="bare", kind="causal")


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        (PretrainedConfig(architectures=["FooForMaskedLM"]), "masked"),
        (PretrainedConfig(architectures=["FooForCausalLM"]), "causal"),
        (GPT2Config(architectures=["GPT2LMHeadModel"]), "causal"),
        (LlamaConfig(), "causal"),
        (BertConfig(), "masked"),
        (BertConfig(is_decoder=True), "causal"),
    ],
)
def test_kind_of_config(config, kind):
    """The LM kind is read from the architectures, else from the config type."""
    assert _kind_of(config) == kind


def test_two_conversions_at_once_both_end_with_the_cache(tmp_path):
    """The second process to finish converting finds the first one's copy in place and uses it."""
    from softprompt.models import publish_dir

    target = tmp_path / "models" / "smol"
    for name in ("first", "second"):
        made = tmp_path / "models" / f".smol.{name}"
        made.mkdir(parents=True)
        (made / "model.safetensors").write_text(name)
        publish_dir(made, target)
        assert not made.exists()
    assert (target / "model.safetensors").read_text() == "first"
    broken = tmp_path / "models" / ".other.x"
    broken.mkdir()
    (broken / "model.safetensors").write_text("x")
    (tmp_path / "models" / "other").mkdir()
    (tmp_path / "models" / "other" / "stray").write_text("not a model")
    with pytest.raises(OSError):  # a non-empty target that is no converted model is not taken for one
        publish_dir(broken, tmp_path / "models" / "other")


def tiny_gemma() -> LanguageModel:
    """A tiny Gemma 3: its embedding multiplies the weights by √d before the first layer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = byte_bpe_tokenizer()
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              bos_token_id=tokenizer.eos_token_id)
    return LanguageModel(Gemma3ForCausalLM(config), tokenizer, name="tiny-gemma", kind="causal")


def test_the_embedding_matrix_is_what_the_first_layer_receives() -> None:
    """Gemma scales its embeddings by √d inside the embedding module: random inits, nearest-token readings and
    projections onto the vocabulary must see the scaled vectors (a 270M Gemma's are 25× its weights)."""
    from softprompt.prompts.soft import embedding_gaussian

    ids = torch.arange(3, 40)
    gemma = tiny_gemma()
    assert torch.equal(gemma.embedding_matrix[ids], gemma.embed(ids).detach())
    assert not torch.allclose(gemma.embedding_matrix, gemma.model.get_input_embeddings().weight)
    assert gemma.embedding_matrix is gemma.embedding_matrix  # the scaled copy is made once
    drawn = embedding_gaussian(gemma).sample(200, seed=0)
    ratio = drawn.norm(dim=-1).mean() / gemma.embedding_matrix.norm(dim=-1).mean()
    assert 0.8 < float(ratio) < 1.25  # random vectors at the scale the model reads, not 1/√d of it
    llama = tiny_causal()
    assert llama.embedding_matrix is llama.model.get_input_embeddings().weight  # unscaled: the weights themselves


def test_fluency_of_a_scaled_embedding_model_equals_its_own_nll() -> None:
    from softprompt.optimizers.fluency import Fluency

    gemma = tiny_gemma()
    ids = torch.tensor([10, 20, 30, 40])
    vectors = gemma.embedding_matrix[ids].clone().requires_grad_()
    fluency = Fluency(gemma)
    nll = fluency.nll_of_vectors(ids, vectors)
    assert nll.item() == pytest.approx(float(fluency.nll(ids[None])[0]), abs=1e-5)
    # The gradient through each token's own logit is the head's: d(h·w)/dv with w = v / √d.
    nll.backward()
    assert fluency.tied and fluency.embed_scale == pytest.approx(32 ** 0.5)
    assert vectors.grad.abs().sum(-1).gt(0).all()
