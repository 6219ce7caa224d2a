"""Built-in strategy `lora`: low-rank adapters (PEFT) on the linear layers; the head trains too."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pefttool.hookspecs import hookimpl
from pefttool.strategy import Strategy, StrategyOptions


class LoraOptions(StrategyOptions):
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
    Options = LoraOptions

    def wrap(self, model, recipe, options):
        from pefttool.adapters import add_lora

        return add_lora(model, recipe, options)

    def save(self, model, out_dir, recipe, options):
        from pefttool.adapters import save_adapter

        save_adapter(model, out_dir, recipe)  # base_model_name_or_path: the recipe's location


@hookimpl
def pefttool_register_strategies(register):
    register(LoraStrategy())
