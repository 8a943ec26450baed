"""Reading prompt files: safetensors with the prompt's metadata as JSON under the header key "softprompt".

Every kind writes itself with ``Prompt.save`` and is rebuilt by its own ``from_file``, found through the
kind registry. Nothing is ever unpickled. Files of the first format (``softprompt.prompt/1``, which
spelled the kind ``mode``, a mixture's components ``component_mode`` and a task prompt's ``kind``) are
read by translating their header to the current one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts.base import FORMAT, PROMPT_KINDS, Prompt
from softprompt.prompts.deep import DeepPrompt
from softprompt.prompts.hard import HardPrompt
from softprompt.prompts.mixture import MixturePrompt
from softprompt.prompts.soft import SoftPrompt
from softprompt.prompts.task import TaskPrompt

FORMAT_V1 = "softprompt.prompt/1"
# Every kind, imported above so that each has registered itself before a file is read.
KINDS = (HardPrompt, SoftPrompt, DeepPrompt, MixturePrompt, TaskPrompt)


def upgrade_v1(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The header of a first-format prompt file in the current format."""
    meta = dict(meta)
    kind = meta.pop("mode")
    if kind == "mixture":
        meta["component_kind"] = meta.pop("component_mode")
    elif kind == "task":
        # Hard task prompts (no vectors) were saved as "soft".
        meta["tuning"] = meta.pop("kind") if len(tensors.get("weight", ())) else "hard"
    return meta | {"format": FORMAT, "kind": kind}


def read_prompt_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata (in the current format) and tensors of a prompt file or of a run directory's prompt."""
    path = Path(path)
    if path.is_dir():
        path = path / "prompt.safetensors"
    if not path.is_file():
        raise SoftpromptError(f"prompt file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k != "empty"}  # noqa: SIM118
        meta = json.loads(header["softprompt"])
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise SoftpromptError(
            f"{path} is not a softprompt prompt file (safetensors with 'softprompt' JSON metadata): {err}"
        ) from err
    if meta.get("format") == FORMAT_V1:
        meta = upgrade_v1(meta, tensors)
    if meta.get("format") != FORMAT:
        raise SoftpromptError(f"{path}: unsupported prompt format {meta.get('format')!r}; expected {FORMAT}")
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
    if meta["kind"] not in PROMPT_KINDS:
        raise SoftpromptError(f"{path}: unknown prompt kind {meta['kind']!r}; known: {', '.join(PROMPT_KINDS)}")
    return PROMPT_KINDS[meta["kind"]].from_file(meta, tensors, lm, path)
