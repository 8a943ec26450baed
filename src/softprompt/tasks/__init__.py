"""NLU tasks as data (YAML), scoring of their answer choices, and prompt tuning on them."""

from softprompt.tasks.objective import ChoiceObjective
from softprompt.tasks.run import TaskSettings, build_prompt, fit, predict, run_task, task_metrics
from softprompt.tasks.scoring import TaskEncoder, choice_scores
from softprompt.tasks.task import Task, TaskExample, builtin_tasks, load_task, tasks_by_cluster

__all__ = [
    "ChoiceObjective",
    "Task",
    "TaskEncoder",
    "TaskExample",
    "TaskSettings",
    "build_prompt",
    "builtin_tasks",
    "choice_scores",
    "fit",
    "load_task",
    "predict",
    "run_task",
    "task_metrics",
    "tasks_by_cluster",
]
