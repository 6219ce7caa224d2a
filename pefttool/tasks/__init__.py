"""Tasks: what a recipe's `task.type` means, each in one `Task` object a plugin registers.

A task owns its transformers model class, its PEFT task type, the rows it reads, its
evaluation and its metric table (name → function, higher-is-better). The built-in tasks are
plugins (`plugins/pefttool_classification`, `plugins/pefttool_causal_lm`) registered through
the `pefttool_register_tasks` hook like anyone's; this package holds the contract and looks a
task up. Imports no torch.
"""

from __future__ import annotations

from typing import Any

from .base import Metric, Prediction, Task, TaskOptions


def registered() -> dict[str, Task]:
    """Every task the loaded plugins registered: task.type → its task object."""
    from ..plugins import get_plugin_host  # the host loads the plugins that register tasks

    return get_plugin_host().tasks


def get_task(recipe_or_type: Any) -> Task:
    """The task object for a recipe (the one it was validated against) or a `task.type`."""
    if not isinstance(recipe_or_type, str):
        settled = getattr(recipe_or_type, "_task", None)
        if settled is not None:
            return settled
        recipe_or_type = recipe_or_type.task.type
    tasks = registered()
    try:
        return tasks[recipe_or_type]
    except KeyError:
        raise ValueError(f"task.type: {recipe_or_type!r} is not a task; use one of "
                         f"{', '.join(tasks) or '(none loaded)'}") from None


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
    for task in registered().values():
        names += [n for n in task.selectable_metrics() if n not in names]
    return tuple(names)


__all__ = ["Metric", "Prediction", "Task", "TaskOptions", "all_metric_names", "check_command", "get_task",
           "registered"]
