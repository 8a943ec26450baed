"""A hard prompt: the template's words, frozen (the LAMA baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts.base import TemplatePrompt
from softprompt.templates import TemplateEncoder


class HardPrompt(TemplatePrompt):
    kind = "hard"

    def __init__(self, encoder: TemplateEncoder, init: str = "template", seed: int = 0) -> None:
        super().__init__(encoder, init="template")  # the words are the prompt: there is nothing to initialise

    @classmethod
    def check_tokens(cls, encoder: TemplateEncoder, meta: dict[str, Any], lm: LanguageModel, path: Path) -> None:
        # A hard prompt is its token ids: another tokenisation would be another prompt.
        if list(encoder.prompt_ids) != meta["prompt_token_ids"]:
            raise SoftpromptError(f"{path}: the template tokenises differently for model '{lm.name}'")
        super().check_tokens(encoder, meta, lm, path)
