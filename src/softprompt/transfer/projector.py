"""The cross-model projector of Su et al. (2022): a prompt of one model mapped into another model's input space.

The L×d_s source prompt is flattened and passed through Linear → hidden (768) → LeakyReLU → Linear to L×d_t, the
reference architecture (thunlp/Prompt-Transferability). Two ways to fit it, both through ``GradientDescent`` (Adam,
early stopping, resumable checkpoints), since the projector is the objective's trainable module:

- **task tuning** (``fit_on_tasks``): the source prompts of one or more tasks stay frozen, their projections are
  the target model's prompts, and the target model's task loss (the choice cross-entropy, the frozen target LM)
  trains the projector only; early stopping on each task's held-out dev examples;
- **distance minimisation** (``fit_on_distances``): the projector maps source prompts onto the target model's own
  trained prompts of the same tasks (mean squared error). There are only a few such pairs, so none is held out: the
  dev loss is the loss on all of them, and early stopping ends the fit once it stops falling.

A projector file is safetensors with JSON metadata (format, sizes, length, the models and the fit) under the
header key ``softprompt.projector``. A projector serves any pair of models with its hidden sizes and any prompt of
its length; others are refused in one line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write, excerpt, one_line
from softprompt.models import LanguageModel
from softprompt.optimizers import FitResult, GradientDescent, TrainConfig
from softprompt.prompts import TaskPrompt
from softprompt.tasks import TaskEncoder, TaskSettings, load_task
from softprompt.tasks.run import split_data
from softprompt.tasks.scoring import Encoded, choice_loss, choice_scores, example_rows, example_sizes, row_scores
from softprompt.tasks.task import Task, TaskExample
from softprompt.transfer.source import SourcePrompt, target_prompt

FORMAT = "softprompt.projector/1"
HEADER = "softprompt.projector"
HIDDEN = 768  # Su et al.'s reference projector
# What the fits start from: a projector is a larger model than a prompt, so a smaller step than prompt tuning's;
# distance minimisation is a few pairs, one step an epoch, so it takes many epochs.
TASK_CONFIG = TrainConfig(lr=1e-3, batch_size=16, max_epochs=20, patience=5)
DISTANCE_CONFIG = TrainConfig(lr=1e-3, batch_size=64, max_epochs=500, patience=50)
# The fields of a projector file's metadata and what each must hold.
FIELDS = {"length": int, "source_size": int, "target_size": int, "hidden": int, "negative_slope": float,
          "source_model": str, "target_model": str}


class Projector(nn.Module):
    """Maps prompts of ``length`` vectors of size ``source_size`` to as many vectors of size ``target_size``."""

    def __init__(self, length: int, source_size: int, target_size: int, hidden: int = HIDDEN,
                 negative_slope: float = 0.01, source_model: str = "", target_model: str = "") -> None:
        super().__init__()
        for name, value in (("length", length), ("source_size", source_size), ("target_size", target_size),
                            ("hidden", hidden)):
            if value < 1:
                raise SoftpromptError(f"a projector's {name} must be at least 1, got {value}")
        self.length, self.source_size, self.target_size = length, source_size, target_size
        self.hidden, self.negative_slope = hidden, negative_slope
        self.source_model, self.target_model = source_model, target_model
        self.fit_record: dict[str, Any] = {}
        self.net = nn.Sequential(nn.Linear(length * source_size, hidden), nn.LeakyReLU(negative_slope),
                                 nn.Linear(hidden, length * target_size))

    @classmethod
    def identity(cls, length: int, size: int, negative_slope: float = 0.01) -> Projector:
        """A projector between models of one hidden size that returns its input (to rounding): the hidden layer holds
        x and -x, and since LeakyReLU(x) - LeakyReLU(-x) = (1 + slope)·x, the output layer divides by that. Its
        hidden size is 2·length·size, not 768: no smaller one can pass every input through LeakyReLU unchanged."""
        n = length * size
        projector = cls(length, size, size, hidden=2 * n, negative_slope=negative_slope)
        eye = torch.eye(n)
        with torch.no_grad():
            projector.net[0].weight.copy_(torch.cat([eye, -eye]))
            projector.net[0].bias.zero_()
            projector.net[2].weight.copy_(torch.cat([eye, -eye], dim=1) / (1 + negative_slope))
            projector.net[2].bias.zero_()
        return projector

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        """(length, source_size) -> (length, target_size); a leading batch dimension is kept."""
        flat = prompts.reshape(*prompts.shape[:-2], self.length * self.source_size)
        return self.net(flat).reshape(*prompts.shape[:-2], self.length, self.target_size)

    def shape(self) -> dict[str, Any]:
        """The fields that rebuild it (``FIELDS``): sizes, length, activation and the models it was made for."""
        return {name: getattr(self, name) for name in FIELDS}

    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT, **self.shape(), "fit": self.fit_record}

    def save(self, path: str | Path) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = json.dumps(self.metadata())
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={HEADER: meta}))

    def check(self, source_size: int, target_size: int, length: int, path: str | Path, models: str) -> None:
        """Refuse, in one line, a prompt or a target model that this projector was not made for."""
        if (source_size, target_size) != (self.source_size, self.target_size):
            raise SoftpromptError(
                f"{path} projects hidden size {self.source_size} to {self.target_size} ({self.source_model or '?'} → "
                f"{self.target_model or '?'}), not {source_size} to {target_size} ({models}); fit a projector for "
                "these sizes with softprompt transfer fit-projector")
        if length != self.length:
            raise SoftpromptError(f"{path} projects prompts of {self.length} vectors, not {length}; fit a projector "
                                  "for this length with softprompt transfer fit-projector")


def load_projector(path: str | Path) -> Projector:
    """A projector file, refused in one line when it is not one or is damaged."""
    path = Path(path)
    if not path.is_file():
        raise SoftpromptError(f"projector file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(HEADER)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise SoftpromptError(f"{path} is not a projector file (safetensors): {one_line(err)}") from err
    damaged = "the file is damaged or was edited; fit the projector again"
    if header is None:
        raise SoftpromptError(f"{path} is not a projector file: its header has no '{HEADER}' metadata (softprompt "
                              "transfer fit-projector writes one)")
    try:
        meta = json.loads(header)
    except ValueError as err:
        raise SoftpromptError(f"{path}: its metadata is not readable JSON ({one_line(err)}); {damaged}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise SoftpromptError(f"{path}: unsupported projector format {excerpt(found)}; expected {FORMAT}")
    for name, kind in FIELDS.items():
        value = meta.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            wanted = "a positive integer" if kind is int else f"a {kind.__name__}"
            raise SoftpromptError(f"{path}: metadata field '{name}' must be {wanted}, got {excerpt(value, 40)}; "
                                  f"{damaged}")
    projector = Projector(**{name: meta[name] for name in FIELDS})
    projector.fit_record = meta["fit"] if isinstance(meta.get("fit"), dict) else {}
    try:
        projector.load_state_dict(tensors)
    except RuntimeError as err:
        raise SoftpromptError(f"{path}: its tensors do not fit its metadata ({one_line(err, 120)}); {damaged}") from err
    return projector


def project_prompt(source: SourcePrompt, projector: Projector, target: LanguageModel,
                   projector_path: str | Path = "projector") -> TaskPrompt:
    """The source prompt mapped into ``target``'s input space: a soft task prompt for ``target`` in the source's
    layout, for its task."""
    projector.check(source.hidden_size, target.hidden_size, source.length, projector_path,
                    f"{source.model} → {target.name}")
    with torch.no_grad():
        vectors = projector(source.vectors.to(next(projector.parameters()).device))
    return target_prompt(source, target, vectors, init="projected")


@dataclass
class SourceTask:
    """One frozen source prompt and its task's examples, to train a projector through the target model."""

    source: SourcePrompt
    task: Task
    train: Sequence[TaskExample]
    dev: Sequence[TaskExample]


@dataclass
class _Encoded:
    source: torch.Tensor  # (L, d_s) on the target's device
    train: Encoded
    dev: Encoded


class TaskTuning:
    """The target model's choice cross-entropy under projected source prompts (an ``Objective``). Its trainable
    module, ``prompt`` to the optimizer, is the projector: the source prompts and the target LM stay frozen. A
    batch may mix tasks; its loss is the mean over its examples, each under its own task's projected prompt."""

    def __init__(self, engine: Engine, projector: Projector, tasks: Sequence[SourceTask], normalise: bool = False,
                 eval_batch_size: int = 64) -> None:
        self.engine, self.prompt, self.normalise, self.eval_batch_size = engine, projector, normalise, eval_batch_size
        self.tasks: list[_Encoded] = []
        self.owner: list[tuple[int, int]] = []  # each training item's (task, example)
        self.items: list[range] = []
        for t, item in enumerate(tasks):
            layout = target_prompt(item.source, engine.lm, torch.zeros(item.source.length, engine.lm.hidden_size),
                                   init="projected")
            encoder = TaskEncoder(engine.lm, item.task, layout)
            encoded = _Encoded(item.source.vectors.to(engine.lm.device), encoder.encode(item.train),
                               encoder.encode(item.dev))
            self.tasks.append(encoded)
            sizes = example_sizes(encoded.train)
            self.items += sizes
            self.owner += [(t, i) for i in range(len(sizes))]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.prompt.parameters()), "lr": lr}]

    def backward(self, indices: list[int]) -> float:
        by_task: dict[int, list[int]] = {}
        for i in indices:
            t, e = self.owner[i]
            by_task.setdefault(t, []).append(e)
        total = 0.0
        for t, examples in by_task.items():
            encoded = self.tasks[t]
            vectors = self.prompt(encoded.source)
            scores = row_scores(self.engine, encoded.train, example_rows(encoded.train, examples), vectors,
                                None).view(len(examples), -1)
            lengths = encoded.train.choice_lengths[examples] if self.normalise else None
            loss = choice_loss(scores, encoded.train.labels[examples], lengths) * (len(examples) / len(indices))
            loss.backward()
            total += loss.item()
        return total

    def dev_loss(self) -> float:
        """The mean dev loss over all tasks' dev examples."""
        total, count = 0.0, 0
        with torch.no_grad():
            for encoded in self.tasks:
                vectors = self.prompt(encoded.source)
                scores = choice_scores(self.engine, encoded.dev, vectors, None, self.eval_batch_size)
                lengths = encoded.dev.choice_lengths if self.normalise else None
                total += choice_loss(scores, encoded.dev.labels, lengths).item() * encoded.dev.num_examples
                count += encoded.dev.num_examples
        return total / count

    def start_epoch(self, epoch: int) -> None:
        pass


class DistanceFit:
    """Mean squared error between projected source prompts and the target model's prompts of the same tasks (an
    ``Objective``; the projector is its trainable module). Every pair is a training item and the dev loss is the
    loss on all of them."""

    def __init__(self, projector: Projector, pairs: Sequence[tuple[SourcePrompt, SourcePrompt]]) -> None:
        if not pairs:
            raise SoftpromptError("distance minimisation needs pairs of source and target prompts of the same task")
        self.prompt = projector
        device = next(projector.parameters()).device
        self.sources = torch.stack([s.vectors for s, _ in pairs]).to(device)
        self.targets = torch.stack([t.vectors for _, t in pairs]).to(device)
        self.items = [range(1)] * len(pairs)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.prompt.parameters()), "lr": lr}]

    def backward(self, indices: list[int]) -> float:
        loss = F.mse_loss(self.prompt(self.sources[indices]), self.targets[indices])
        loss.backward()
        return loss.item()

    def dev_loss(self) -> float:
        with torch.no_grad():
            return F.mse_loss(self.prompt(self.sources), self.targets).item()

    def start_epoch(self, epoch: int) -> None:
        pass


def source_tasks(sources: Sequence[SourcePrompt], tasks: Sequence[Task], settings: TaskSettings, seed: int = 0,
                 data_dir: Path | None = None) -> list[SourceTask]:
    """Each source prompt with its task's training data, split into train and held-out dev examples as a task run
    splits them (``settings``' dev_size, train_limit, shots and balance, seeded by ``seed``). A prompt's task is the
    one of ``tasks`` with its name, else the built-in task of that name."""
    by_name = {t.name: t for t in tasks}
    splits: dict[str, tuple[list[TaskExample], list[TaskExample]]] = {}
    out = []
    for source in sources:
        task = by_name.get(source.task) or load_task(source.task)
        if task.name not in splits:
            splits[task.name] = split_data(task, task.load("train", data_dir), settings, seed)
        out.append(SourceTask(source, task, *splits[task.name]))
    return out


def pairs_by_task(sources: Sequence[SourcePrompt], targets: Sequence[SourcePrompt]
                  ) -> list[tuple[SourcePrompt, SourcePrompt]]:
    """Every source prompt with every target prompt of the same task (distance minimisation's training pairs)."""
    pairs = [(s, t) for s in sources for t in targets if t.task == s.task]
    if missing := sorted({s.task for s in sources} - {t.task for t in targets}):
        raise SoftpromptError(f"no target prompt for the task(s) {', '.join(missing)}: distance minimisation pairs "
                              "each source prompt with target prompts of its task")
    return pairs


def check_sources(projector: Projector, sources: Sequence[SourcePrompt], size: int, what: str) -> None:
    """Every prompt must have the projector's length and the ``what`` (source or target) hidden size."""
    for s in sources:
        if s.length != projector.length or s.hidden_size != size:
            raise SoftpromptError(f"{s.path} has {s.length} vectors of size {s.hidden_size}; the {what} prompts of "
                                  f"this projector need {projector.length} of size {size}")


def fit_on_tasks(projector: Projector, engine: Engine, tasks: Sequence[SourceTask], config: TrainConfig = TASK_CONFIG,
                 normalise: bool = False, checkpoint: Path | None = None, resume: bool = False, progress: bool = True
                 ) -> FitResult:
    """Train ``projector`` (in place, to its best dev state) through ``engine``'s target model on the tasks of the
    frozen source prompts. The result's ``prompt`` is the projector."""
    if not tasks:
        raise SoftpromptError("task tuning of a projector needs at least one source prompt and its task")
    check_sources(projector, [t.source for t in tasks], projector.source_size, "source")
    projector.check(projector.source_size, engine.lm.hidden_size, projector.length, "the projector",
                    f"target model {engine.lm.name}")
    projector.to(engine.lm.device)
    objective = TaskTuning(engine, projector, tasks, normalise, config.eval_batch_size)
    settings = {"mode": "task", "sources": [t.source.record() for t in tasks], "tasks": [t.task.name for t in tasks],
                "target_model": engine.lm.name, "normalise": normalise, "projector": projector.shape()}
    result = GradientDescent(config, progress).fit(objective, checkpoint, resume, settings=settings)
    projector.fit_record = fit_record(result, settings)
    return result


def fit_on_distances(projector: Projector, pairs: Sequence[tuple[SourcePrompt, SourcePrompt]],
                     config: TrainConfig = DISTANCE_CONFIG, checkpoint: Path | None = None, resume: bool = False,
                     progress: bool = True) -> FitResult:
    """Fit ``projector`` (in place, to its lowest loss) to map each pair's source prompt onto its target prompt."""
    check_sources(projector, [s for s, _ in pairs], projector.source_size, "source")
    check_sources(projector, [t for _, t in pairs], projector.target_size, "target")
    settings = {"mode": "distance", "pairs": [[s.record(), t.record()] for s, t in pairs],
                "projector": projector.shape()}
    result = GradientDescent(config, progress).fit(DistanceFit(projector, pairs), checkpoint, resume, settings=settings)
    projector.fit_record = fit_record(result, settings)
    return result


def fit_record(result: FitResult, settings: dict[str, Any]) -> dict[str, Any]:
    """What a projector file says of its fit: the mode, the prompts it learnt from, and how the fit went."""
    kept = {k: v for k, v in settings.items() if k != "projector"}
    return kept | {"best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss,
                   "epochs": result.history[-1]["epoch"] if result.history else 0}
