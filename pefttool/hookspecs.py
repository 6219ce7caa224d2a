"""Every hook a pefttool plugin can implement, grouped by phase.

Implement them with the `pefttool.hookimpl` marker in a module or class registered under the
`pefttool` entry-point group (`[project.entry-points.pefttool] myplugin = "mypkg.plugin"`).
Arguments may be left out of an implementation: pluggy passes only those it names, so a hook
can gain arguments without breaking existing plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from .events import CheckpointEvent, EndEvent, EvalEvent, LogEvent, PhaseEvent, StartEvent, StepEvent
    from .strategy import Strategy
    from .tasks.base import Task

hookspec = pluggy.HookspecMarker("pefttool")
#: the marker for implementations (also exported as `pefttool.hookimpl`)
hookimpl = pluggy.HookimplMarker("pefttool")


# ------------------------------------------------------------------ start-up


@hookspec
def pefttool_register_strategies(register: Callable[[Strategy], None]) -> None:
    """Register training strategies. Called once when the plugin host starts.

    Call `register(MyStrategy())` for each strategy the plugin adds. A strategy's `name` is what
    a recipe's `method.strategy` names; two plugins registering the same name is an error that
    names both. Return nothing.
    """


@hookspec
def pefttool_register_tasks(register: Callable[[Task], None]) -> None:
    """Register task types. Called once when the plugin host starts.

    Call `register(MyTask())` for each task the plugin adds (a `pefttool.Task`). A task's `type`
    is what a recipe's `task.type` names; two plugins registering the same type is an error that
    names both. The built-in tasks (classification, causal-lm) register through this hook too.
    Return nothing.
    """


# ------------------------------------------------------------------ observers (the run)
# Fired by the engine in the training process, in this order. Every event is also written to
# RUN_DIR/events.jsonl. Return values are ignored. An exception in an observer during training
# writes a checkpoint, then stops the run with exit 3 and a line naming the plugin and the hook
# (`pefttool resume` continues it); with `plugins.on_error = "warn"` it is a warning instead.


@hookspec
def pefttool_run_start(event: StartEvent) -> None:
    """The model is loaded and wrapped, data is ready, and the first step is next.

    `event` holds the resolved recipe, the run directory, the planned steps and the parameter
    counts. Return nothing.
    """


@hookspec
def pefttool_step_end(event: StepEvent) -> None:
    """An optimizer step finished (every `train.log_every` steps and the last one).

    `event` (a `StepEvent`) holds `step`, `total_steps`, `epoch`, `loss` (mean since the last
    event), `lr`, `tokens_per_s`, `samples_per_s`, `elapsed_s`, `eta_s`, `rss_mb`, and on a GPU
    `gpu_mem_mb`, `gpu_total_mb` and `gpu_util`. Keep it quick: it runs on the training process
    between steps. Return nothing.
    """


@hookspec
def pefttool_eval_end(event: EvalEvent) -> None:
    """An evaluation finished (before training, each epoch or every N steps).

    `event` holds all metrics, the metric that decides early stopping, and whether this is the
    best so far. Return nothing.
    """


@hookspec
def pefttool_checkpoint(event: CheckpointEvent) -> None:
    """A checkpoint was written completely (atomically) and can be resumed from.

    `event` holds the step, the checkpoint's path and why it was written (interval, epoch,
    eval, end, stop). Return nothing.
    """


@hookspec
def pefttool_log(event: LogEvent) -> None:
    """The engine has a message for people (data cleaning counts, a warning, a resume).

    `event` holds the level (info, warning, error) and the one-line message. Return nothing.
    """


@hookspec
def pefttool_phase(event: PhaseEvent) -> None:
    """The run moved to work that is not a training step: loading, evaluating, checkpointing.

    `event.phase` is loading, evaluating (with `event.done` of `event.total` batches, about
    once a second), checkpointing or saving (the model); the next step or end event closes
    it. For progress displays. Return nothing.
    """


@hookspec
def pefttool_run_end(event: EndEvent) -> None:
    """The run is over: completed, early-stopped, interrupted or failed (see `event.status`).

    Called once, also when the run fails, after the model is saved. Return nothing. An
    exception here is reported on one line naming the plugin; the run keeps its own outcome.
    """
