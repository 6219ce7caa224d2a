"""Task objects: what a recipe's `task.type` means, in one place per task.

A task owns its transformers model class, its PEFT task type, its evaluation and its metric
table (name → function, higher-is-better). A new metric is one entry in a table; a new task
type (seq2seq, say) is one new module registered in `TASKS`. Imports no torch.
"""

from __future__ import annotations

from typing import Any

from .base import Metric, Task
from .causal_lm import CAUSAL_LM, CausalLMTask
from .classification import CLASSIFICATION, ClassificationTask

# task.type → its task object
TASKS: dict[str, Task] = {task.type: task for task in (CLASSIFICATION, CAUSAL_LM)}


def get_task(recipe_or_type: Any) -> Task:
    """The task object for a recipe (or for a `task.type` string)."""
    name = recipe_or_type if isinstance(recipe_or_type, str) else recipe_or_type.task.type
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task.type: {name!r} is not a task; use one of {', '.join(TASKS)}") from None


def check_command(recipe: Any, command: str) -> None:
    """A finished run answers through its task's command (`predict` labels, `generate` writes);
    another command is refused in one line, before any model loads."""
    from ..errors import OutputError

    task = get_task(recipe)
    if task.inference_command != command:
        raise OutputError(f"pefttool {command} does not answer a {task.type} run; use pefttool "
                          f"{task.inference_command} RUN_DIR TEXT")


def all_metric_names() -> tuple[str, ...]:
    """Every metric a recipe may choose as eval.metric, over all tasks (in table order)."""
    names: list[str] = []
    for task in TASKS.values():
        names += [n for n in task.selectable_metrics() if n not in names]
    return tuple(names)


__all__ = ["CAUSAL_LM", "CLASSIFICATION", "TASKS", "CausalLMTask", "ClassificationTask", "Metric",
           "Task", "all_metric_names", "check_command", "get_task"]
