"""Strategy `ia3`: IA³ (Liu et al., 2022) through PEFT: a learned vector rescales the keys,
values and feed-forward activations; far fewer trainable parameters than LoRA.

Only `wrap` is needed: `pefttool.peft_wrap` sets the task type, keeps a classifier's new head
trainable (and saved with the adapter), and quiets PEFT's known warnings.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pefttool.hookspecs import hookimpl
from pefttool.strategy import Strategy, StrategyOptions


class IA3Options(StrategyOptions):
    target_modules: list[str] | None = Field(
        None, description="modules to rescale (default: PEFT's choice for the architecture)")
    feedforward_modules: list[str] | None = Field(
        None, description="which of target_modules are feed-forward (scaled on their input)")


class IA3Strategy(Strategy):
    name = "ia3"
    description = "IA³: learned rescaling vectors (PEFT); tiny adapters, higher lr than LoRA"
    Options = IA3Options

    def wrap(self, model: Any, recipe: Any, options: IA3Options) -> Any:
        from peft import IA3Config

        import pefttool

        config = IA3Config(target_modules=options.target_modules,
                           feedforward_modules=options.feedforward_modules)
        return pefttool.peft_wrap(model, config, recipe)

    def save(self, model: Any, out_dir: Any, recipe: Any, options: Any) -> None:
        model.save_pretrained(out_dir, safe_serialization=True)


@hookimpl
def pefttool_register_strategies(register):
    register(IA3Strategy())
