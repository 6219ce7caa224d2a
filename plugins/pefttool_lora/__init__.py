"""Built-in strategy `lora`: low-rank adapters (PEFT) on the linear layers; the head trains too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from pefttool.hookspecs import hookimpl
from pefttool.strategy import Strategy, StrategyOptions

if TYPE_CHECKING:  # only for the annotations: a plugin's import must stay light (no torch)
    import torch

    from pefttool.recipe import Recipe


class LoraOptions(StrategyOptions):
    """The recipe's `[method]` keys for `lora` (and `qlora`, which adds its own)."""

    r: int = Field(8, ge=1, le=1024, description="adapter rank: higher learns more, costs memory")
    alpha: float = Field(16, gt=0, description="scale of the adapter update (alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt; all-linear finds every projection")
    rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r)")
    dora: bool = Field(False, description="weight-decomposed LoRA (slower, sometimes better)")
    modules_to_save: list[str] | None = Field(
        None, description="extra modules trained in full (default: the task head)")


class LoraStrategy(Strategy):
    """PEFT LoRA on a full-precision base. `wrap` freezes the base, adds adapters (never on a
    causal LM's lm_head) and trains a classifier's head in full; `save` writes a PEFT adapter
    (adapter_config.json + adapter_model.safetensors) that `PeftModel.from_pretrained` loads."""

    name = "lora"
    description = "LoRA adapters on linear layers (PEFT); small, fast, saves an adapter"
    Options: type[LoraOptions] = LoraOptions
    compare_in_plan = True
    continues_adapter = True   # model.adapter: add_lora trains it further

    def wrap(self, model: torch.nn.Module, recipe: Recipe, options: LoraOptions) -> torch.nn.Module:
        """Strategy contract, called once after loading: returns the `PeftModel` with LoRA
        adapters as `options` say (a `target_modules` name that matches no layer is a
        one-line recipe error listing the names that exist)."""
        from pefttool.adapters import add_lora

        return add_lora(model, recipe, options)

    def save(self, model: torch.nn.Module, out_dir: Path, recipe: Recipe, options: LoraOptions) -> None:
        """Strategy contract, called for the best and the final model: writes the adapter
        (and the trained head) to `out_dir`, its base model named as the recipe names it.
        Returns nothing."""
        from pefttool.adapters import save_adapter

        save_adapter(model, out_dir, recipe)


@hookimpl
def pefttool_register_strategies(register: Callable[[Strategy], None]) -> None:
    """Hook `pefttool_register_strategies` (once, at start-up): registers `lora`. Returns nothing."""
    register(LoraStrategy())
