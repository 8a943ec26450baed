"""A hard prompt: words, frozen. The template's own words (the LAMA baseline), or token ids a discrete search
found for its positions (AutoPrompt, PEZ, RLPrompt), which need not be the tokenisation of any text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts.base import TemplatePrompt, searched_tokens, token_fields
from softprompt.templates import TemplateEncoder


class HardPrompt(TemplatePrompt):
    kind = "hard"

    def __init__(self, encoder: TemplateEncoder, init: str = "template", seed: int = 0,
                 token_ids: Sequence[int] | None = None) -> None:
        super().__init__(encoder, init="template")  # the words are the prompt: there is nothing to initialise
        if token_ids is None and encoder.triggers:
            raise SoftpromptError(f"template {encoder.template.text!r} has [T] triggers: a hard prompt needs token "
                                  "ids for them (find them with softprompt search)")
        if token_ids is not None and len(token_ids) != len(encoder.prompt_ids):
            raise SoftpromptError(f"template {encoder.template.text!r} has {len(encoder.prompt_ids)} prompt "
                                  f"positions for model '{self.model_name}', but {len(token_ids)} token ids were given")
        self.token_ids = tuple(token_ids) if token_ids is not None else None

    def word_ids(self) -> Sequence[int]:
        return self.token_ids if self.token_ids is not None else self.encoder.prompt_ids

    def vectors(self) -> torch.Tensor | None:
        if self.token_ids is None:
            return None  # the engine embeds the template's words where they stand
        return self.input_vectors()

    def input_vectors(self) -> torch.Tensor:
        ids = torch.tensor(self.word_ids(), dtype=torch.long, device=self.lm.device)
        return self.lm.embed(ids).detach().float()

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        return meta | token_fields(self.lm, self.token_ids) if self.token_ids is not None else meta

    @classmethod
    def from_file(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], lm: LanguageModel,
                  path: Path) -> HardPrompt:
        encoder = TemplateEncoder(meta["template"], lm)
        cls.check_tokens(encoder, meta, lm, path)
        return cls(encoder, token_ids=searched_tokens(meta, lm, path))

    @classmethod
    def check_tokens(cls, encoder: TemplateEncoder, meta: dict[str, Any], lm: LanguageModel, path: Path) -> None:
        # A hard prompt is its token ids: another tokenisation would be another prompt.
        if list(encoder.prompt_ids) != meta["prompt_token_ids"]:
            raise SoftpromptError(f"{path}: the template tokenises differently for model '{lm.name}'")
        super().check_tokens(encoder, meta, lm, path)
