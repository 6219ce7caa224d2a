"""A run settled: what a validated recipe means on this machine, decided once.

The engine, `pefttool plan`, a finished run's loading (`trained`: predict, generate, export) and
`pefttool validate` all read the same answers from here instead of working them out again (they
had started to disagree: plan counted steps without packing, checkpointing was ORed together
in two places, CPU-or-GPU was decided twice in the engine). In the spirit of axolotl's
`normalize_config`: validation says what the recipe is; this says what it implies.

    run = settle(recipe)                 # the recipe's own strategy, checked on this machine
    run.strategy, run.options            # the strategy as the engine calls it (GuardedStrategy)
    run.on_cpu, run.device               # where it trains (imports torch only when asked)
    run.gradient_checkpointing, run.gradient_checkpointing_why
    run.layout                           # how the strategy quantizes the base (or None)
    run.length(rows, processes)          # rows, batches and steps (sampling.RunLength)

A value that needs torch (the device; QLoRA's compute dtype on `auto`) is worked out when first
asked, so `pefttool validate` still loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .errors import PluginError
from .models import gradient_checkpointing_wanted
from .sampling import RunLength
from .strategy import GuardedStrategy, QuantizedLayout

if TYPE_CHECKING:
    from .plugins import PluginHost
    from .recipe import Recipe
    from .tasks.base import Task


@dataclass(frozen=True)
class SettledRun:
    recipe: Recipe
    strategy: GuardedStrategy
    options: Any

    @property
    def task(self) -> Task:
        from .tasks import get_task

        return get_task(self.recipe)

    @cached_property
    def on_cpu(self) -> bool:
        """train.device, with `auto` meaning a CUDA GPU when torch sees one."""
        device = self.recipe.train.device
        if device in ("cpu", "cuda"):
            return device == "cpu"
        import torch

        return not torch.cuda.is_available()

    @property
    def device(self) -> str:
        return "cpu" if self.on_cpu else "cuda"

    @cached_property
    def gradient_checkpointing(self) -> bool:
        return gradient_checkpointing_wanted(self.recipe, self.strategy.strategy, self.options)

    @property
    def gradient_checkpointing_why(self) -> str:
        """Why it is on or off, in words (for the start of a run and `plan`)."""
        r = self.recipe
        if r.train.gradient_checkpointing is not None:
            return f"train.gradient_checkpointing = {str(r.train.gradient_checkpointing).lower()}"
        if getattr(self.options, "gradient_checkpointing", False):
            return f"method.gradient_checkpointing = true ({r.method.strategy})"
        if self.gradient_checkpointing:
            return f"the default for {r.task.type} under {r.method.strategy} (a memory-first strategy)"
        return "train.gradient_checkpointing is unset (off by default)"

    @cached_property
    def layout(self) -> QuantizedLayout | None:
        return self.strategy.quantized_layout(self.recipe, self.options)

    def length(self, rows: int, processes: int = 1) -> RunLength:
        """The run's rows, batches and steps when an epoch trains on `rows` (examples, or packed
        rows with data.packing) in `processes` processes: the one count engine and plan share."""
        return RunLength(rows, self.recipe, processes)


def settle(recipe: Recipe, host: PluginHost | None = None, *, strategy: str | None = None,
           options: Any = None, check: bool = True) -> SettledRun:
    """The recipe settled on this machine. `strategy`/`options` settle it as another strategy
    (plan's side-by-side rows); `check` runs the strategy's own check (a missing library is one
    line, before anything loads). Raises `PluginError` when the strategy is not loaded."""
    if host is None:
        from .plugins import get_plugin_host

        host = get_plugin_host()
    name = strategy or recipe.method.strategy
    chosen = host.strategies.get(name)
    if chosen is None:
        raise PluginError(f"method.strategy: '{name}' is not loaded (its plugin is not installed, or "
                          f"PEFTTOOL_PLUGINS left it out); pefttool plugins lists what is")
    run = SettledRun(recipe=recipe, strategy=GuardedStrategy(chosen),
                     options=recipe.strategy_options if options is None else options)
    if check:
        run.strategy.check(recipe, run.options)
    return run
