"""A hard prompt: the template's words, frozen (the LAMA baseline)."""

from __future__ import annotations

from softprompt.prompts.base import Prompt
from softprompt.templates import TemplateEncoder


class HardPrompt(Prompt):
    mode = "hard"

    def __init__(self, encoder: TemplateEncoder, init: str = "template") -> None:
        super().__init__(encoder, init="template")
