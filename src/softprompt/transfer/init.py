"""Transfer as initialisation (SPoT, Vu et al.; Su et al. finding 2): a new task prompt starts from the vectors of
prompts trained on other tasks, on the same model, and then trains as usual.

With several sources the start is their element-wise mean (a mix of tasks); with one it is that prompt's vectors
exactly, so before any step the new prompt scores exactly as its source does. The sources must come from the same
model (``--model``: vectors of another model mean nothing here; project or bridge them first) and have as many
vectors as the new prompt: a length mismatch is refused rather than cycled or cut, since either would silently
change what the source prompt does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from softprompt.errors import SoftpromptError
from softprompt.prompts import TaskPrompt
from softprompt.transfer.source import SourcePrompt, read_source

# What a prompt file says of vectors that came from other prompts (its ``init``).
INIT = "transfer"


class PromptInit:
    """Replaces a new task prompt's vectors by the mean of the source prompts' vectors. Called on the prompt a run
    has just built (``run_task(..., init_from=PromptInit(paths))``), it returns the sources' record, which the run
    keeps in its config.json; ``record()`` gives the same record beforehand, for a resume check."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        if not paths:
            raise SoftpromptError("transfer as initialisation needs at least one source prompt (--from)")
        self.sources = [read_source(p) for p in paths]
        shapes = {s.vectors.shape for s in self.sources}
        if len(shapes) > 1 or len({s.model for s in self.sources}) > 1:
            found = ", ".join(f"{s.path} ({s.model}, {s.length}×{s.hidden_size})" for s in self.sources)
            raise SoftpromptError(f"the source prompts must come from one model and have the same shape; got {found}")

    @property
    def model(self) -> str:
        return self.sources[0].model

    @property
    def length(self) -> int:
        return self.sources[0].length

    @property
    def layout(self) -> str:
        """The first source's layout: a new prompt in it has as many vectors as the sources."""
        return self.sources[0].meta["layout"]

    def check_model(self, name: str) -> None:
        """Refuse, in one line, to start a prompt of model ``name`` from these sources (before any work)."""
        check_model(self.sources[0], name)

    def record(self) -> list[dict[str, Any]]:
        return [s.record() for s in self.sources]

    def vectors(self) -> torch.Tensor:
        """The sources' mean vectors; with one source, its vectors as they are (bit for bit)."""
        if len(self.sources) == 1:
            return self.sources[0].vectors
        return torch.stack([s.vectors for s in self.sources]).mean(0)

    def __call__(self, prompt: TaskPrompt) -> list[dict[str, Any]]:
        check_fits(self.sources[0], prompt)
        with torch.no_grad():
            prompt.weight.copy_(self.vectors().to(prompt.weight))
        prompt.init = INIT
        return self.record()


def check_fits(source: SourcePrompt, prompt: TaskPrompt) -> None:
    """Refuse, in one line, a new prompt without vectors, and sources of another model or length."""
    if prompt.tuning == "hard":
        raise SoftpromptError("a hard prompt has no vectors to start from other prompts; use --kind soft or deep")
    check_model(source, prompt.model_name)
    if source.hidden_size != prompt.hidden_size:
        raise SoftpromptError(f"{source.path} has vectors of size {source.hidden_size}, but model "
                              f"'{prompt.model_name}' has hidden size {prompt.hidden_size}: it is not the model the "
                              "prompt was trained on")
    if source.length != prompt.length:
        raise SoftpromptError(f"{source.path} has {source.length} vectors but the new prompt has {prompt.length}; "
                              f"use a layout with {source.length} [P] positions (e.g. --length {source.length})")


def check_model(source: SourcePrompt, name: str) -> None:
    if source.model != name:
        raise SoftpromptError(f"{source.path} was trained for model '{source.model}', not '{name}'; start from it "
                              f"with --model {source.model}, or move it to this model first (softprompt transfer "
                              "project or bridge)")
