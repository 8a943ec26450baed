"""What every transfer starts from: a trained task prompt's vectors, read from its file without loading its model.

Transfer moves a prompt's *vectors* (its layer-0 input vectors): into a new prompt of the same model
(initialisation), through a projector into another model's space, or through the two vocabularies. Reading the
file is enough for that, so a source model is loaded only where its vocabulary is needed (the bridge). Deep
prompts are refused: their per-layer perturbations belong to one model's layers and have no counterpart in a new
prompt's vectors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts import TaskPrompt, read_prompt_file
from softprompt.prompts.task import MARKER


@dataclass
class SourcePrompt:
    """A trained task prompt's vectors and the fields of its file that a transferred prompt keeps."""

    path: Path
    meta: dict[str, Any]
    vectors: torch.Tensor  # (length, hidden size), float32, on the CPU

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def length(self) -> int:
        return self.vectors.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.vectors.shape[1]

    def record(self) -> dict[str, Any]:
        """Where a transferred prompt came from, for run records and projector files: the file, its content's hash
        (a path alone could later hold another prompt), its model and task."""
        return {"path": str(self.path), "sha256": file_sha256(self.path), "model": self.model, "task": self.task,
                "length": self.length}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def read_source(path: str | Path) -> SourcePrompt:
    """A task prompt file (or a task run directory) with vectors to transfer, refused in one line otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / "prompt.safetensors"
    meta, tensors = read_prompt_file(path)
    if meta["kind"] != "task":
        raise SoftpromptError(f"{path} holds a {meta['kind']} prompt for fact probing; transfer takes task prompts "
                              "(softprompt task train)")
    if meta["tuning"] == "deep":
        raise SoftpromptError(f"{path} holds a deep prompt: its per-layer perturbations do not transfer; transfer a "
                              "soft prompt (task train --kind soft)")
    weight = tensors.get("weight")
    if weight is None or weight.dim() != 2 or not len(weight):
        raise SoftpromptError(f"{path} holds a prompt without vectors (a manual layout); there is nothing to transfer")
    if weight.shape[1] != meta["hidden_size"]:
        raise SoftpromptError(f"{path}: its vectors have size {weight.shape[1]} but its metadata says hidden size "
                              f"{meta['hidden_size']}; the file is damaged or was edited; train the prompt again")
    return SourcePrompt(path, meta, weight.detach().float().cpu())


def resized_layout(layout: str, template_markers: int, old: int, new: int) -> str:
    """``layout`` holding ``new`` vectors instead of ``old``: itself when they are equal, else its one [P*N] run
    resized. A layout with several runs, or [P] markers in the task template, has no one place to put the change."""
    if new == old:
        return layout
    runs = list(MARKER.finditer(layout))
    if len(runs) != 1 or template_markers:
        raise SoftpromptError(f"a prompt with layout {layout!r} ({template_markers} [P] markers in the template) keeps "
                              f"its {old} vectors; only a layout with one [P*N] run can change its length")
    run = runs[0]
    return f"{layout[: run.start()]}[P*{new}]{layout[run.end():]}"


def target_prompt(source: SourcePrompt, lm: LanguageModel, vectors: torch.Tensor, init: str, init_text: str = ""
                  ) -> TaskPrompt:
    """A soft task prompt for ``lm`` holding ``vectors`` in the source's layout (resized to their number) for the
    source's task; ``init`` and ``init_text`` say in its file how the vectors were made."""
    layout = resized_layout(source.meta["layout"], source.meta["template_markers"], source.length, len(vectors))
    # "vocab" only fills the vectors that are replaced next (cheap, and never fails for want of a text).
    prompt = TaskPrompt(lm, layout, 0, source.meta["template_markers"], "soft", "vocab", init_text,
                        source.meta["seed"], source.task)
    prompt.init = init
    with torch.no_grad():
        prompt.weight.copy_(vectors.to(prompt.weight))
    return prompt
