"""Zero-shot cross-task transfer (Dayton et al. §5.3, Su et al. §4): every task's trained prompts
evaluated on every task, against no prompt and against the task's own prompts, and how well each
similarity indicator predicts it (Spearman's rank correlation)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class TransferMatrix:
    """Scores of source prompts on target tasks (the targets' first metric)."""

    sources: list[str]  # prompt labels, e.g. "cb/seed-0"
    source_tasks: list[str]
    targets: list[str]
    scores: list[list[float]]  # [source][target]
    no_prompt: dict[str, float]  # each target without any prompt (its manual template)

    def task_scores(self) -> dict[str, dict[str, float]]:
        """Mean over each source task's prompts: [source task][target]."""
        out: dict[str, dict[str, float]] = {}
        for task in dict.fromkeys(self.source_tasks):
            rows = [self.scores[i] for i, t in enumerate(self.source_tasks) if t == task]
            out[task] = {t: float(np.mean([r[j] for r in rows])) for j, t in enumerate(self.targets)}
        return out

    def own(self) -> dict[str, float]:
        """Each target's score with its own task's prompts (mean over them)."""
        task = self.task_scores()
        return {t: task[t][t] for t in self.targets if t in task}

    def change_vs_no_prompt(self) -> dict[str, dict[str, float]]:
        return {s: {t: v - self.no_prompt[t] for t, v in row.items()} for s, row in self.task_scores().items()}

    def change_vs_own(self) -> dict[str, dict[str, float]]:
        own = self.own()
        return {s: {t: v - own[t] for t, v in row.items() if t in own} for s, row in self.task_scores().items()}

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def transfer_matrix(sources: Sequence[tuple[str, str]], targets: Sequence[str],
                    evaluate: Callable[[int | None, str], float]) -> TransferMatrix:
    """``sources``: (label, task) per prompt; ``evaluate(i, target)`` scores prompt ``i`` (None: no prompt)
    on a target task. Every cell is one evaluation, so a caller can cache them."""
    scores = [[evaluate(i, t) for t in targets] for i in range(len(sources))]
    return TransferMatrix([s[0] for s in sources], [s[1] for s in sources], list(targets), scores,
                          {t: evaluate(None, t) for t in targets})


@dataclass
class Correlation:
    indicator: str
    rho: float  # Spearman's rank correlation between the indicator and the transfer gain
    p_value: float
    points: int
    expected_sign: int  # +1 if more similar should mean better transfer with this indicator's direction


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    from scipy.stats import spearmanr

    if len(x) < 3:
        return math.nan, math.nan
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def similarity_vs_transfer(matrix: TransferMatrix, similarities: Mapping[str, Sequence[Sequence[float]]],
                           higher_is_similar: Mapping[str, bool]) -> tuple[list[Correlation], dict[str, list]]:
    """For every source prompt and every *other* target task: the prompt's mean similarity to the target
    task's own prompts against its transfer gain over no prompt. ``similarities`` are prompt × prompt
    matrices in ``matrix.sources`` order. Returns the correlations and the points behind them."""
    correlations, points = [], {}
    for name, sim in similarities.items():
        xs, ys = [], []
        for i, task in enumerate(matrix.source_tasks):
            for j, target in enumerate(matrix.targets):
                own = [k for k, t in enumerate(matrix.source_tasks) if t == target]
                if target == task or not own:
                    continue
                values = [sim[i][k] for k in own if not math.isnan(sim[i][k])]
                if not values:
                    continue
                xs.append(float(np.mean(values)))
                ys.append(matrix.scores[i][j] - matrix.no_prompt[target])
        rho, p = spearman(xs, ys)
        correlations.append(Correlation(name, rho, p, len(xs), 1 if higher_is_similar[name] else -1))
        points[name] = [xs, ys]
    return correlations, points


# --- transfer as initialisation: how much sooner a transferred start converges --------------------------------------


def epochs_to(history: Sequence[Mapping[str, float]], loss: float) -> float:
    """The first epoch of a run's history (epoch 0: before training) whose dev loss is at most ``loss``; inf if
    none."""
    return next((h["epoch"] for h in history if h["dev_loss"] <= loss), math.inf)


def convergence_speed_up(baseline: Sequence[Mapping[str, float]], history: Sequence[Mapping[str, float]],
                         fraction: float = 0.9) -> float:
    """Epochs the baseline needs to get ``fraction`` of the way from its start to its best dev loss, over the epochs
    ``history`` needs to reach that same dev loss (Su et al.'s "accelerates training"): >1 faster; inf when
    ``history`` starts there; 0 when it never gets there; NaN when the baseline starts at its best (nothing to
    gain)."""
    start, best = baseline[0]["dev_loss"], min(h["dev_loss"] for h in baseline)
    goal = start - fraction * (start - best)
    own, other = epochs_to(baseline, goal), epochs_to(history, goal)
    if own == 0:
        return math.nan
    if other == 0:
        return math.inf
    return own / other


def shown_speed(value: float) -> str:
    """A convergence speed-up as a table shows it: "–" (NaN), "starts there" (inf), "never" (0) or the ratio."""
    if math.isnan(value):
        return "–"
    return "starts there" if math.isinf(value) else "never" if value == 0 else f"{value:.2f}"
