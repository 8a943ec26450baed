"""Moving prompts between tools, tasks and models: PEFT prompt-tuning adapters (``peft``)."""

from softprompt.transfer.peft import export_peft, import_peft

__all__ = ["export_peft", "import_peft"]
