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
    run.loss_chunks, run.loss_chunks_why # the next-token loss in chunks (0: full logits)
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

#: train.loss_chunks when the recipe leaves it unset and the task's loss is over a vocabulary
DEFAULT_LOSS_CHUNKS = 8


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
    def loss_chunks(self) -> int:
        """train.loss_chunks as the run uses it: the chunks of the next-token loss (0: the
        model's own loss over the full logits)."""
        return self._loss_chunks[0]

    @property
    def loss_chunks_why(self) -> str:
        return self._loss_chunks[1]

    @cached_property
    def _loss_chunks(self) -> tuple[int, str]:
        r, task = self.recipe, self.task
        if not task.vocabulary_loss:
            return 0, f"task '{task.type}' has no loss over a vocabulary"
        if r.train.loss_chunks is not None:   # (check_loss_chunks refused one it cannot use)
            return r.train.loss_chunks, f"train.loss_chunks = {r.train.loss_chunks}"
        if self.reads_logits:
            return 0, f"strategy '{r.method.strategy}' computes its own loss from the model's logits"
        return DEFAULT_LOSS_CHUNKS, f"the default for task '{task.type}'"

    @property
    def reads_logits(self) -> bool:
        """The strategy computes the training loss from the model's logits (its own
        `compute_loss`, which the task's own `training_loss` does not replace)."""
        from .strategy import Strategy
        from .tasks.base import Task

        task = getattr(self.task, "task", self.task)   # (under its GuardedTask)
        own_loss = type(task).training_loss is not Task.training_loss
        return not own_loss and type(self.strategy.strategy).compute_loss is not Strategy.compute_loss

    def check_loss_chunks(self) -> None:
        """A recipe asking for chunks its strategy cannot use (it reads the logits): one line."""
        from .errors import RecipeError

        if self.recipe.train.loss_chunks and self.task.vocabulary_loss and self.reads_logits:
            raise RecipeError(self.recipe.source, [
                f"train.loss_chunks: strategy '{self.recipe.method.strategy}' computes its own loss "
                f"from the model's logits, which the chunked loss never makes; set "
                f"train.loss_chunks = 0"])

    def check_adapter(self) -> None:
        """model.adapter under a strategy that does not continue one: one line, before loading."""
        from .errors import RecipeError

        r = self.recipe
        if r.model.adapter is not None and not getattr(self.strategy.strategy, "continues_adapter", False):
            raise RecipeError(r.source, [
                f"model.adapter: strategy '{r.method.strategy}' does not train an existing adapter "
                f"further; use an adapter strategy, or merge the adapter into its base (pefttool "
                f"export RUN --merge) and set model.path to the merged model"])

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
        run.check_loss_chunks()
        run.check_adapter()
    return run
