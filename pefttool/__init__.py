"""pefttool: fine-tune pretrained transformers from TOML recipes, with strategy plugins.

The importable API. Importing it loads neither torch nor textual; those load when a run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .adapters import peft_wrap
from .errors import DataError, ModelError, OutputError, PefttoolError, PluginError, RecipeError, TrainingError
from .events import CheckpointEvent, EndEvent, EvalEvent, Event, LogEvent, PhaseEvent, StartEvent, StepEvent
from .hookspecs import hookimpl
from .recipe import Recipe, load_recipe, validate_recipe
from .strategy import Strategy, StrategyOptions

__version__ = "0.1.0"


if TYPE_CHECKING:
    from .engine import RunResult


def run(recipe: Recipe, resume: bool = False, **kwargs: Any) -> RunResult:
    """Fine-tune as the recipe says; see `pefttool.engine.run_recipe`."""
    from .engine import run_recipe

    return run_recipe(recipe, resume=resume, **kwargs)


__all__ = [
    "CheckpointEvent", "EndEvent", "EvalEvent", "Event", "LogEvent", "PhaseEvent", "StartEvent",
    "StepEvent",
    "DataError", "ModelError", "OutputError", "PefttoolError", "PluginError", "Recipe", "RecipeError",
    "Strategy", "StrategyOptions", "TrainingError", "hookimpl", "peft_wrap", "load_recipe",
    "run", "validate_recipe", "__version__",
]
