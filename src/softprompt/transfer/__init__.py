"""Moving prompts between tools, tasks and models: PEFT prompt-tuning adapters (``peft``), transfer as
initialisation on the same model (``init``), the cross-model projector (``projector``) and the vocabulary
bridge (``bridge``), all starting from a trained prompt's vectors (``source``)."""

from softprompt.transfer.bridge import Bridged, bridge_prompt, bridge_vectors
from softprompt.transfer.init import PromptInit
from softprompt.transfer.peft import export_peft, import_peft
from softprompt.transfer.projector import (
    Projector,
    SourceTask,
    fit_on_distances,
    fit_on_tasks,
    load_projector,
    project_prompt,
)
from softprompt.transfer.source import SourcePrompt, read_source

__all__ = [
    "Bridged",
    "Projector",
    "PromptInit",
    "SourcePrompt",
    "SourceTask",
    "bridge_prompt",
    "bridge_vectors",
    "export_peft",
    "fit_on_distances",
    "fit_on_tasks",
    "import_peft",
    "load_projector",
    "project_prompt",
    "read_source",
]
