"""Tiny random-initialised models and tokenizers built in-process: no downloads, seconds to build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from softprompt.models import LanguageModel

# The tiny models' matrices are too small to split across threads: extra threads only add synchronisation,
# which costs several times the work itself when the cores are busy. Real-model tests raise it again.
DEFAULT_THREADS = torch.get_num_threads()
torch.set_num_threads(1)

WORDS = [
    "the",
    "capital",
    "of",
    "is",
    "was",
    "born",
    "in",
    "a",
    "city",
    "country",
    "currency",
    "located",
    "continent",
    "language",
    "speaks",
    "native",
    "France",
    "Paris",
    "Germany",
    "Berlin",
    "Japan",
    "Tokyo",
    "Italy",
    "Rome",
    "Spain",
    "Madrid",
    "Peru",
    "Lima",
    "Chile",
    "Egypt",
    "Cairo",
    "Kenya",
    "Europe",
    "Asia",
    "Africa",
    "euro",
    "yen",
    "dollar",
    "peso",
    "English",
    "French",
    "German",
    "Japanese",
    "Italian",
    "Spanish",
    "Mozart",
    "Einstein",
    "Curie",
    "Bach",
    "Newton",
    ".",
    ",",
    "'",
    "s",
]


def corpus() -> list[str]:
    return [" ".join(WORDS[i : i + 7]) for i in range(0, len(WORDS), 3)] + [" ".join(WORDS)]


def byte_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE (spaces attach to the following word), like SmolLM2's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece with [CLS] ... [SEP] wrapping."""
    from tokenizers import processors

    # A fixed vocabulary (the WordPiece trainer is not deterministic across calls): whole words, then
    # every character alone and as a continuation piece, so any text made of these letters tokenises.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for word in WORDS for c in word})
    pieces = specials + list(dict.fromkeys(WORDS)) + [c for c in chars if c not in WORDS] + [f"##{c}" for c in chars]
    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_causal(seed: int = 0, hidden: int = 32, layers: int = 2) -> LanguageModel:
    tokenizer = byte_bpe_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LanguageModel(LlamaForCausalLM(config), tokenizer, name=f"tiny-llama-{hidden}", kind="causal")


def tiny_masked(seed: int = 0, hidden: int = 32, layers: int = 2) -> LanguageModel:
    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LanguageModel(BertForMaskedLM(config), tokenizer, name=f"tiny-bert-{hidden}", kind="masked")


def tiny_seq2seq() -> LanguageModel:
    tokenizer = byte_bpe_tokenizer()
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    return LanguageModel(T5ForConditionalGeneration(config), tokenizer, name="tiny-t5", kind="seq2seq")


@pytest.fixture(scope="session")
def causal_lm() -> LanguageModel:
    return tiny_causal()


@pytest.fixture(scope="session")
def masked_lm() -> LanguageModel:
    return tiny_masked()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny models saved as local directories, loadable with load_model(path) and --model path."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, lm in {"causal": tiny_causal(), "masked": tiny_masked(), "causal64": tiny_causal(hidden=64)}.items():
        lm.model.save_pretrained(root / name)
        lm.tokenizer.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SOFTPROMPT_CACHE in a temporary directory, and the Hugging Face hub offline (no network retries)."""
    import huggingface_hub.constants

    cache = tmp_path / "softprompt-cache"
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium for the report's browser test, installed from Debian's packages when missing."""
    import os
    import shutil
    import subprocess

    from softprompt.analysis.report import find_chromium

    found = find_chromium()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "chromium"]):
            done = subprocess.run(command, capture_output=True, timeout=1200, env={**os.environ,
                                  "DEBIAN_FRONTEND": "noninteractive"})
            if command[1] == "install" and done.returncode == 0:
                break
        found = find_chromium()
    if found is None:
        pytest.skip("headless Chromium is not installed and could not be (Debian package chromium)")
    return found
