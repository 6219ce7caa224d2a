"""A registered task as the core calls it: a plugin's failure is one line naming the plugin.

The plugin host stores every registered task wrapped in a `GuardedTask`. An exception from a
method the plugin itself answers (not pefttool's default), unless it is a `PefttoolError`,
becomes `task 'NAME' (PLUGIN) failed in METHOD: ...`; a result of the wrong kind (None from
`row_format`, a non-number in `evaluate`'s metrics, fewer predictions than rows...) becomes
`task 'NAME' (PLUGIN) returned ... from METHOD: FIX`. Exit 2 before training, 3 in it (a bug
in a plugin is not pefttool's "internal error", and the message says whose it is). Imports no
torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from ..strategy import loss_problem
from .base import Prediction, Task


def _is_row_format(value: Any) -> bool:
    from ..data.formats import RowFormat

    return isinstance(value, RowFormat)


def _is_metrics(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
        and not math.isnan(v) for k, v in value.items())


def _is_lines(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# method → (whether its result is right, what to return instead)
RETURNS: dict[str, tuple[Any, str]] = {
    "row_format": (_is_row_format, "return a pefttool.data.formats.RowFormat for the recipe"),
    "model_kwargs": (lambda v: isinstance(v, Mapping), "return a dict of from_pretrained keyword "
                                                       "arguments ({} for none)"),
    "has_prompts": (lambda v: isinstance(v, bool), "return True or False"),
    "gradient_checkpointing_by_default": (lambda v: isinstance(v, bool), "return True or False"),
    "frozen_models": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                      "return a count of frozen copies (0 for none)"),
    "check_recipe": (_is_lines, "return a list of problem lines ([] when the recipe fits)"),
    "check_data": (lambda v: v is None, "return None (raise pefttool.errors.DataError for a problem)"),
    "evaluate": (_is_metrics, "return a dict of metric name → number (no NaN)"),
    "score": (_is_metrics, "return a dict of metric name → number (no NaN)"),
    "replies": (_is_lines, "return a list of reply strings"),
    "prediction_fields": (lambda v: isinstance(v, Mapping), "return a dict of JSON fields"),
}
# methods called while a run trains: their failure ends it with exit 3
IN_TRAINING = ("evaluate", "score", "replies", "training_loss")
GUARDED = (*RETURNS, "predictions", "example_labels", "training_loss")


class GuardedTask:
    """A task as the core calls it (see the module's docstring); every other attribute is the
    task's own."""

    def __init__(self, task: Task):
        object.__setattr__(self, "task", task)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.task, name, value)   # the host sets .plugin on what it stores

    def problem(self, method: str, text: str) -> Exception:
        from ..errors import PluginError

        error = PluginError(f"task '{self.task.type}' ({self.task.plugin or 'unknown plugin'}) {text}")
        error.exit_code = 3 if method in IN_TRAINING else 2
        return error

    def __copy__(self) -> GuardedTask:
        return self   # one task object per type, as registered (a recipe copy shares it)

    def __deepcopy__(self, memo: dict[int, Any]) -> GuardedTask:
        return self

    def __getattr__(self, name: str) -> Any:
        if name == "task" or name.startswith("__"):
            raise AttributeError(name)   # (before __init__ ran: unpickling, copying)
        attr = getattr(self.task, name)
        if name not in GUARDED or not callable(attr):
            return attr
        if getattr(attr, "__func__", attr) is getattr(Task, name, None):
            return attr   # pefttool's own default: right by construction

        def call(*args: Any, **kwargs: Any) -> Any:
            from ..errors import PefttoolError
            from ..tracing import trace, tracing

            began = time.perf_counter()
            try:
                result = attr(*args, **kwargs)
            except PefttoolError:
                raise
            except Exception as exc:
                text = " ".join(str(exc).split())
                raise self.problem(name, f"failed in {name}: {type(exc).__name__}: {text[:300]}") from exc
            finally:
                if tracing():
                    trace(f"{self.task.type}.{name}", self.task.plugin or "?", began)
            if name == "example_labels":
                pass   # a tensor on the meta device: plan's forward pass says what is wrong
            elif name == "training_loss":
                why = loss_problem(result, name)
                if why:
                    raise self.problem(name, why)
            elif name == "predictions":
                rows = len(args[0]) if args else len(kwargs.get("logits", ()))
                if not (isinstance(result, list) and len(result) == rows
                        and all(isinstance(p, Prediction) for p in result)):
                    raise self.problem(name, f"returned {_what(result)} from predictions for {rows} "
                                             f"rows: return one pefttool.tasks.Prediction per row")
            elif not RETURNS[name][0](result):
                raise self.problem(name, f"returned {_what(result)} from {name}: {RETURNS[name][1]}")
            return result

        return call

    def __repr__(self) -> str:
        return repr(self.task)


def _what(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, Mapping):
        bad = next(((k, v) for k, v in value.items() if not isinstance(v, (int, float))
                    or isinstance(v, bool) or (isinstance(v, float) and math.isnan(v))), None)
        if bad is not None:
            return f"a dict whose {bad[0]!r} is {bad[1]!r}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"a {type(value).__name__}"
