"""Strategy `ia3`: IA³ (Liu et al., 2022) through PEFT: a learned vector rescales the keys,
values and feed-forward activations; far fewer trainable parameters than LoRA.

Only `wrap` is needed: `pefttool.peft_wrap` sets the task type, keeps a classifier's new head
trainable (and saved with the adapter), and quiets PEFT's known warnings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from pefttool import Strategy, StrategyOptions, hookimpl, peft_wrap

if TYPE_CHECKING:  # only for the annotations: importing the plugin loads no torch
    import torch

    from pefttool import Recipe


class IA3Options(StrategyOptions):
    """The recipe's `[method]` keys for `ia3` (both default to PEFT's per-architecture choice)."""

    target_modules: list[str] | None = Field(
        None, description="modules to rescale (default: PEFT's choice for the architecture)")
    feedforward_modules: list[str] | None = Field(
        None, description="which of target_modules are feed-forward (scaled on their input)")


class IA3Strategy(Strategy):
    """IA³ through PEFT: only `wrap` and `save` differ from the defaults."""

    name = "ia3"
    description = "IA³: learned rescaling vectors (PEFT); tiny adapters, higher lr than LoRA"
    Options = IA3Options

    def wrap(self, model: torch.nn.Module, recipe: Recipe, options: IA3Options) -> torch.nn.Module:
        """Strategy contract, called once after loading: returns the `PeftModel` with IA³
        vectors (a classifier's head trains in full and is saved with them)."""
        from peft import IA3Config

        config = IA3Config(target_modules=options.target_modules,
                           feedforward_modules=options.feedforward_modules)
        return peft_wrap(model, config, recipe)

    def save(self, model: torch.nn.Module, out_dir: Path, recipe: Recipe, options: IA3Options) -> None:
        """Strategy contract, called for the best and the final model: writes a stock PEFT
        adapter that `PeftModel.from_pretrained` loads. Returns nothing."""
        # a PeftModel; torch's stubs only know it as a Module
        model.save_pretrained(out_dir, safe_serialization=True)  # type: ignore[operator]


@hookimpl
def pefttool_register_strategies(register: Callable[[Strategy], None]) -> None:
    """Hook `pefttool_register_strategies` (once, at start-up): registers `ia3`. Returns nothing."""
    register(IA3Strategy())
