"""Reading prompt files: safetensors with the prompt's metadata as JSON under the header key "softprompt".

Every kind writes itself with ``Prompt.save`` and is rebuilt by its own ``from_file``, found through the
kind registry. Nothing is ever unpickled. Files of the first format (``softprompt.prompt/1``, which
spelled the kind ``mode``, a mixture's components ``component_mode`` and a task prompt's ``kind``) are
read by translating their header to the current one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from softprompt.errors import SoftpromptError
from softprompt.io import encodable, excerpt, one_line
from softprompt.models import LanguageModel
from softprompt.prompts.base import FORMAT, PROMPT_KINDS, Prompt
from softprompt.prompts.deep import DeepPrompt
from softprompt.prompts.hard import HardPrompt
from softprompt.prompts.mixture import MixturePrompt
from softprompt.prompts.soft import SoftPrompt
from softprompt.prompts.task import TaskPrompt, count_markers, expand_layout

FORMAT_V1 = "softprompt.prompt/1"
# Every kind, imported above so that each has registered itself before a file is read.
KINDS = (HardPrompt, SoftPrompt, DeepPrompt, MixturePrompt, TaskPrompt)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


# What a metadata field must hold: a description for messages, and its test.
_STRING = ("a string", lambda v: isinstance(v, str))
# The model's name is quoted in messages as an option to give (--model NAME): one printable line.
_NAME = ("a model name on one line", lambda v: isinstance(v, str) and v.isprintable() and 0 < len(v) <= 1000)
_SIZE = ("a positive integer", lambda v: _int(v) and v > 0)
_COUNT = ("a non-negative integer", lambda v: _int(v) and v >= 0)
_BOOL = ("true or false", lambda v: isinstance(v, bool))
_SEED = ("an integer seed", lambda v: _int(v) and -(2**63) <= v < 2**64)  # what torch.Generator accepts
_IDS = ("a list of token ids", _list_of(lambda v: _int(v) and v >= 0))
_STRINGS = ("a list of strings", _list_of(lambda v: isinstance(v, str)))
_SEEDS = ("a list of integer seeds", _list_of(_SEED[1]))
_ID_LISTS = ("a list of lists of token ids", _list_of(_IDS[1]))
_TEMPLATE_FIELDS = {"template": _STRING, "init": _STRING, "prompt_token_ids": _IDS}
# The fields every prompt file has besides its kind, then those each kind's from_file reads.
COMMON_FIELDS = {"model": _NAME, "hidden_size": _SIZE, "num_layers": _SIZE}
KIND_FIELDS: dict[str, dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "hard": _TEMPLATE_FIELDS,
    "soft": _TEMPLATE_FIELDS,
    "deep": _TEMPLATE_FIELDS,
    "mixture": {"component_kind": _STRING, "templates": _STRINGS, "sources": _STRINGS, "inits": _STRINGS,
                "seeds": _SEEDS, "prompt_token_ids": _ID_LISTS, "answer_space": _BOOL, "data_dependent": _BOOL},
    "task": {"layout": _STRING, "template_markers": _COUNT, "tuning": _STRING, "init": _STRING, "init_text": _STRING,
             "seed": _SEED, "task": _STRING},
}
# A mixture's fields with one entry per component prompt.
MIXTURE_LISTS = ("templates", "sources", "inits", "seeds", "prompt_token_ids")
DAMAGED = "the file is damaged or was edited; train the prompt again"


def upgrade_v1(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The header of a first-format prompt file in the current format."""
    meta = dict(meta)
    kind = _pop(meta, "mode", path)
    if kind == "mixture":
        meta["component_kind"] = _pop(meta, "component_mode", path)
    elif kind == "task":
        # Hard task prompts (no vectors) were saved as "soft".
        tuning = _pop(meta, "kind", path)
        meta["tuning"] = tuning if "weight" in tensors and tensors["weight"].numel() else "hard"
    return meta | {"format": FORMAT, "kind": kind}


def _pop(meta: dict[str, Any], name: str, path: Path) -> Any:
    """A field that a first-format header must have, removed from it."""
    if name not in meta:
        raise SoftpromptError(f"{path}: its metadata has no field '{name}'; {DAMAGED}")
    return meta.pop(name)


def check_metadata(meta: dict[str, Any], path: Path) -> None:
    """Refuse metadata that lacks a field its kind of prompt is rebuilt from, or holds one of the wrong type."""
    check_field(meta, "kind", _STRING, path)
    if meta["kind"] not in PROMPT_KINDS:
        raise SoftpromptError(
            f"{path}: unknown prompt kind {excerpt(meta['kind'])}; known: {', '.join(PROMPT_KINDS)}"
        )
    for name, expected in (COMMON_FIELDS | KIND_FIELDS.get(meta["kind"], {})).items():
        check_field(meta, name, expected, path)
    if meta["kind"] == "mixture" and len({len(meta[name]) for name in MIXTURE_LISTS}) > 1:
        raise SoftpromptError(
            f"{path}: the metadata fields {', '.join(MIXTURE_LISTS)} must have one entry per prompt; {DAMAGED}"
        )


def check_field(meta: dict[str, Any], name: str, expected: tuple[str, Callable[[Any], bool]], path: Path) -> None:
    """Refuse metadata without the field ``name``, or with a value that fails its test."""
    description, test = expected
    if name not in meta:
        raise SoftpromptError(f"{path}: its metadata has no field '{name}'; {DAMAGED}")
    if not test(meta[name]):
        raise SoftpromptError(
            f"{path}: metadata field '{name}' must be {description}, got {excerpt(meta[name], 40)}; {DAMAGED}"
        )


def read_prompt_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata (in the current format, its fields checked) and tensors of a prompt file or of a run
    directory's prompt."""
    path = Path(path)
    if path.is_dir():
        path = path / "prompt.safetensors"
    if not path.is_file():
        raise SoftpromptError(f"prompt file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k != "empty"}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise SoftpromptError(
            f"{path} is not a softprompt prompt file (safetensors with 'softprompt' JSON metadata): {one_line(err)}"
        ) from err
    if "softprompt" not in header:
        raise SoftpromptError(f"{path} is not a softprompt prompt file: its safetensors header has no 'softprompt' "
                              "metadata (is it a model's weights?)")
    try:
        meta = json.loads(header["softprompt"])
    except (ValueError, RecursionError) as err:  # ValueError includes json.JSONDecodeError
        raise SoftpromptError(f"{path}: its 'softprompt' metadata is not readable JSON ({one_line(err)}); "
                              f"{DAMAGED}") from err
    if not isinstance(meta, dict) or not encodable(meta):
        raise SoftpromptError(f"{path}: its 'softprompt' metadata must be a JSON object of text; {DAMAGED}")
    if meta.get("format") == FORMAT_V1:
        meta = upgrade_v1(meta, tensors, path)
    if meta.get("format") != FORMAT:
        raise SoftpromptError(f"{path}: unsupported prompt format {excerpt(meta.get('format'))}; expected {FORMAT}")
    check_metadata(meta, path)
    return meta, tensors


def load_prompt(path: str | Path, lm: LanguageModel) -> Prompt:
    """Load a saved prompt of any kind for ``lm``, refusing one trained for a model of another shape."""
    meta, tensors = read_prompt_file(path)
    path = Path(path)
    if meta["hidden_size"] != lm.hidden_size:
        raise SoftpromptError(
            f"{path} holds a prompt trained for model '{meta['model']}' (hidden size {meta['hidden_size']}), "
            f"but the loaded model '{lm.name}' has hidden size {lm.hidden_size}; "
            f"load it with --model {meta['model']} or train a new prompt for this model"
        )
    deep = "deep" in (meta["kind"], meta.get("component_kind"), meta.get("tuning"))
    if deep and meta["num_layers"] != lm.num_layers:
        raise SoftpromptError(
            f"{path} holds a deep prompt for {meta['num_layers']} layers, but model '{lm.name}' has "
            f"{lm.num_layers}; load it with --model {meta['model']}"
        )
    try:
        if meta["kind"] == "task":
            check_task_vectors(meta, tensors, path)
        return PROMPT_KINDS[meta["kind"]].from_file(meta, tensors, lm, path)
    except SoftpromptError as err:  # e.g. an unknown init or layout: say which file holds it
        if str(path) in str(err):
            raise
        raise SoftpromptError(f"{path}: {err}") from err
    except RuntimeError as err:  # load_state_dict: a tensor missing, unexpected, or of another shape
        detail = one_line(str(err).partition(":")[2] or err)
        raise SoftpromptError(f"{path}: its tensors do not fit its metadata ({detail}); {DAMAGED}") from err


def check_task_vectors(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A task prompt's "weight" must hold one vector per [P] position of its layout and template, checked
    before the prompt is built: a damaged count could otherwise ask for billions of vectors."""
    expected = count_markers(expand_layout(meta["layout"], 0)) + meta["template_markers"]
    weight = tensors.get("weight")
    if weight is None or weight.dim() != 2 or len(weight) != expected:
        found = "no tensor 'weight'" if weight is None else f"'weight' of shape {list(weight.shape)}"
        raise SoftpromptError(
            f"{path}: its layout and template have {expected} [P] positions, but it holds {found}; {DAMAGED}"
        )
