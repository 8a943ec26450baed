"""The multitask model of ZeroPrompt (Xu et al. 2022, §3.4): one task-specific soft prompt E_t per training
task, laid out in the hybrid prompt ``[P*n]{description}\\nOptions: {options}\\n{input}``, and a component
shared by every task.

ZeroPrompt fine-tunes the whole LM on the task mixture; here the LM stays frozen and the shared component is
either ``deep`` (one (L+1, n, d) additive perturbation of the prompt positions at every layer, the same for
every task's n vectors) or ``lora`` (PEFT LoRA adapters in the LM's attention: the closest stand-in for full
multitask fine-tuning that keeps the base weights frozen).

Every task's vectors sit in one stacked table (task t's at rows t·n … t·n+n−1), and the deep perturbation is
repeated once per task so that it lines up with them: one engine call scores rows of any tasks. The trained
model is one file, ``multitask.safetensors`` (tensors, and the task list and settings as JSON; never pickled).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write, one_line
from softprompt.models import LanguageModel
from softprompt.prompts.task import INITS, MARKER, TaskPrompt, count_markers, expand_layout, initial_task_vectors
from softprompt.runs import RunDir
from softprompt.tasks.scoring import TaskEncoder
from softprompt.tasks.task import Task
from softprompt.zeroprompt.lora import SharedLoRA

SHARED = ("deep", "lora")
# LoRA's usual Adam step; prompt vectors move on the scale of word embeddings and need a larger one.
LORA_LR = 1e-3
ARTEFACT = "multitask.safetensors"
HEADER = "softprompt.multitask"
FORMAT = "softprompt.multitask/1"


@dataclass(frozen=True)
class MultitaskSettings:
    """How the multitask model is built and trained (besides the optimiser's TrainConfig)."""

    layout: str = "hybrid"
    length: int = 20  # n, the vectors of each task's E
    shared: str = "deep"
    init: str = "text"  # each E_t: its task description's embeddings, sampled common tokens, or random draws
    cap: int = 500  # examples of one task per epoch (examples-proportional mixing up to this cap)
    dev_size: int = 32  # held out per task for early stopping (at most a fifth of its training split)
    normalise: bool = False
    feature_inputs: int = 32  # unlabeled inputs per task whose mean hidden state is the task's feature
    lora_rank: int = 8
    lora_alpha: float = 16.0
    shared_lr: float | None = None  # default: the prompts' lr for deep, LORA_LR for lora

    def __post_init__(self) -> None:
        if self.shared not in SHARED:
            raise SoftpromptError(f"unknown shared component {self.shared!r}; choose one of: {', '.join(SHARED)}")
        if self.init not in INITS:
            raise SoftpromptError(f"unknown prompt init {self.init!r}; choose one of: {', '.join(INITS)}")
        for name in ("length", "cap", "dev_size", "feature_inputs", "lora_rank"):
            if getattr(self, name) < 1:
                raise SoftpromptError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.shared == "deep" and not count_markers(expand_layout(self.layout, self.length)):
            raise SoftpromptError(f"layout {self.layout!r} has no [P] positions for the task prompts and the shared "
                                  "deep prompt; use hybrid, prefix, or a pattern with [P*N] (or --shared lora, which "
                                  "can train without task prompts: ZeroPrompt's −E ablation)")
        if self.shared_lr is not None and not self.shared_lr > 0:
            raise SoftpromptError(f"the shared component's learning rate must be positive, got {self.shared_lr}")


class MultitaskPrompt(nn.Module):
    """E_t for each training task (``prompts``, (T, n, d)), the shared component (``delta`` or ``lora``) and each
    task's feature (``features``, (T, d): the mean final hidden state of its inputs, for unseen-task inits)."""

    def __init__(self, lm: LanguageModel, tasks: Sequence[str], settings: MultitaskSettings, seed: int,
                 prompts: torch.Tensor) -> None:
        super().__init__()
        if lm.kind == "seq2seq":
            raise SoftpromptError(f"zeroprompt trains on causal and masked LMs; model {lm.name!r} is an "
                                  "encoder-decoder")
        self.lm, self.task_names, self.settings, self.seed = lm, list(tasks), settings, seed
        self.layout = expand_layout(settings.layout, settings.length)
        self.prompts = nn.Parameter(prompts.to(lm.device))
        self.delta = (nn.Parameter(torch.zeros(lm.num_layers + 1, self.length, lm.hidden_size, device=lm.device))
                      if settings.shared == "deep" else None)
        self.lora = SharedLoRA(lm, settings.lora_rank, settings.lora_alpha, seed) if settings.shared == "lora" else None
        self.register_buffer("features", torch.zeros(len(self.task_names), lm.hidden_size, device=lm.device))

    @property
    def length(self) -> int:
        return count_markers(self.layout)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.delta] if self.delta is not None else list(self.lora.parameters())

    def shared_lr(self, lr: float) -> float:
        if self.settings.shared_lr is not None:
            return self.settings.shared_lr
        return LORA_LR if self.lora is not None else lr

    def table(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Every task's vectors in one table, (T·n, d), and the shared perturbation repeated to line up with
        them, (L+1, T·n, d) (None for lora)."""
        if not self.length:  # a layout without task prompts (LoRA only): nothing to stack
            return None, None
        vectors = self.prompts.reshape(-1, self.prompts.shape[-1])
        deltas = self.delta.repeat(1, len(self.task_names), 1) if self.delta is not None else None
        return vectors, deltas

    def applied(self) -> AbstractContextManager[None]:
        """Where scores must be computed: with the LoRA adapters switched on (nothing to do for deep)."""
        return self.lora.active() if self.lora is not None else nullcontext()

    def encoder(self, task: Task) -> TaskEncoder:
        """Encodes ``task``'s examples in this model's layout (slot_offset t·n points them at task t's E)."""
        return TaskEncoder(self.lm, task, self.task_prompt(self.prompts[0], task.name))

    def task_prompt(self, vectors: torch.Tensor | None, task: str = "") -> TaskPrompt:
        """A standalone task prompt equal to scoring under ``vectors`` (n, d) with the shared perturbation (a deep
        prompt whose delta is it; a soft prompt for lora, whose adapters ``applied()`` adds); ``None``: the layout
        without its [P] positions (hybrid: the hybrid-hard prompt), a hard prompt."""
        if vectors is None:
            return TaskPrompt(self.lm, MARKER.sub("", self.layout), 0, tuning="hard", task=task)
        prompt = TaskPrompt(self.lm, self.layout, self.length, tuning="deep" if self.delta is not None else "soft",
                            init="vocab", seed=self.seed, task=task)
        prompt.init = "zeroprompt"
        with torch.no_grad():
            prompt.weight.copy_(vectors)
            if self.delta is not None:
                prompt.delta.copy_(self.delta)
        return prompt

    def save(self, path: Path) -> None:
        """Write the model as one safetensors file with its task list and settings as JSON."""
        meta = {"format": FORMAT, "model": self.lm.name, "model_kind": self.lm.kind, "hidden_size": self.lm.hidden_size,
                "num_layers": self.lm.num_layers, "tasks": self.task_names, "seed": self.seed,
                "settings": asdict(self.settings)}
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={HEADER: json.dumps(meta)}))


def new_multitask(lm: LanguageModel, tasks: Sequence[Task], settings: MultitaskSettings, seed: int
                  ) -> MultitaskPrompt:
    """A fresh multitask model: E_t from each task's description (init text) or one seeded draw for all tasks
    (vocab, random: every task gets its own vectors), a zero perturbation or fresh LoRA adapters."""
    names = [t.name for t in tasks]
    if not tasks or len(set(names)) < len(names):
        raise SoftpromptError("zeroprompt needs one or more tasks with distinct names, got "
                              f"{', '.join(names) or 'none'}")
    for task in tasks:
        if count_markers(task.template):
            raise SoftpromptError(f"task {task.name!r}: its template has [P] markers; multitask prompts share one "
                                  "layout, so give a template without them")
        if settings.init == "text" and not task.description.strip():
            raise SoftpromptError(f"task {task.name!r} has no description to initialise its prompt from; give it "
                                  "one, or use --init vocab or random")
    n = count_markers(expand_layout(settings.layout, settings.length))
    if settings.init == "text":
        prompts = torch.stack([initial_task_vectors(lm, n, "text", t.description, seed) for t in tasks])
    else:
        prompts = initial_task_vectors(lm, n * len(tasks), settings.init, "", seed).view(len(tasks), n, -1)
    return MultitaskPrompt(lm, names, settings, seed, prompts)


def read_multitask(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """The metadata and tensors of a multitask file, or of a finished zeroprompt run directory's, and the file."""
    path = Path(path)
    if path.is_dir():
        RunDir(path).check_complete()
        path = path / ARTEFACT
    if not path.is_file():
        raise SoftpromptError(f"{path}: no multitask model here; train one with softprompt zeroprompt train")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[HEADER])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format') if isinstance(meta, dict) else meta!r}, not {FORMAT}")
        settings = MultitaskSettings(**meta["settings"])
        if not (isinstance(meta["tasks"], list) and all(isinstance(t, str) for t in meta["tasks"])):
            raise TypeError("'tasks' must be a list of names")
    except SoftpromptError:
        raise
    except Exception as err:  # safetensors, JSON and missing fields fail in their own ways
        raise SoftpromptError(f"{path} is not a readable multitask model ({one_line(err)}); train it again") from err
    return meta | {"settings": settings}, tensors, path


def load_multitask(path: str | Path, lm: LanguageModel) -> MultitaskPrompt:
    """The multitask model saved at ``path`` (a file or a run directory), for ``lm``: scores equal the saved
    model's exactly."""
    meta, tensors, path = read_multitask(path)
    shape = (meta["model_kind"], meta["hidden_size"], meta["num_layers"])
    if shape != (lm.kind, lm.hidden_size, lm.num_layers):
        raise SoftpromptError(f"{path} was trained for model '{meta['model']}' ({shape[0]}, hidden size {shape[1]}, "
                              f"{shape[2]} layers), not '{lm.name}'; use --model {meta['model']}")
    expected = (len(meta["tasks"]), count_markers(expand_layout(meta["settings"].layout, meta["settings"].length)),
                lm.hidden_size)
    if "prompts" not in tensors or tuple(tensors["prompts"].shape) != expected:
        raise SoftpromptError(f"{path}: its task prompts do not fit its task list and layout (expected shape "
                              f"{list(expected)}); train it again")
    model = MultitaskPrompt(lm, meta["tasks"], meta["settings"], meta["seed"], tensors["prompts"])
    try:
        model.load_state_dict({k: v.to(lm.device) for k, v in tensors.items()})
    except RuntimeError as err:
        raise SoftpromptError(f"{path}: its tensors do not fit model '{lm.name}' ({one_line(err)}); use --model "
                              f"{meta['model']}") from err
    return model
