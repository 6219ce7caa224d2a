"""Strategy `loraplus`: LoRA with a higher learning rate for the B matrices (LoRA+).

LoRA+ (Hayou, Ghosh, Yu, 2024) trains the adapters' B matrices `lr_ratio` times faster than the
A matrices, which speeds up and often improves LoRA at no memory cost. It needs nothing but
optimizer parameter groups, so it uses two parts of the strategy contract: `wrap` (PEFT LoRA,
through `pefttool.peft_wrap`) and `param_groups`.

Everything heavy (torch, peft) is imported inside the methods, so installing this plugin does
not slow down `pefttool validate` or `pefttool plugins`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from pefttool import Strategy, StrategyOptions, hookimpl, peft_wrap

if TYPE_CHECKING:  # only for the annotations: importing the plugin loads no torch
    import torch

    from pefttool import Recipe


class LoraPlusOptions(StrategyOptions):
    """The recipe's `[method]` keys for `loraplus`: LoRA's shape, plus the B matrices' ratio."""

    r: int = Field(8, ge=1, le=1024, description="adapter rank: higher learns more, costs memory")
    alpha: float = Field(16, gt=0, description="scale of the adapter update (alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt; all-linear finds every projection")
    lr_ratio: float = Field(16.0, ge=1, le=1024,
                            description="B matrices learn lr_ratio × train.lr (the paper: ~16)")


class LoraPlusStrategy(Strategy):
    """LoRA+ : `wrap` adds PEFT LoRA adapters, `param_groups` gives the B matrices their own
    learning rate; the optimizer and schedule are the recipe's."""

    name = "loraplus"
    description = "LoRA+ : LoRA with B matrices at lr_ratio × the learning rate (PEFT)"
    Options = LoraPlusOptions

    def wrap(self, model: torch.nn.Module, recipe: Recipe,
             options: LoraPlusOptions) -> torch.nn.Module:
        """Strategy contract, called once after loading: returns the `PeftModel` with LoRA
        adapters (a classifier's head trains in full and is saved with them)."""
        from peft import LoraConfig

        # PEFT annotates lora_alpha as int; the scale alpha / r is a float, so any float works.
        config = LoraConfig(r=options.r, lora_alpha=options.alpha,  # type: ignore[arg-type]
                            lora_dropout=options.dropout, target_modules=options.target_modules)
        return peft_wrap(model, config, recipe)

    def param_groups(self, model: torch.nn.Module, recipe: Recipe,
                     options: LoraPlusOptions) -> list[dict[str, Any]]:
        """Strategy contract, called once after `wrap`: returns three optimizer groups, the
        matrices at `train.lr` with weight decay, biases and norms at `train.lr` without, and
        the B matrices at `lr_ratio × train.lr` with weight decay."""
        lr, decay = recipe.train.lr, recipe.train.weight_decay
        groups: dict[str, list[Any]] = {"b": [], "decay": [], "no_decay": []}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if "lora_B" in name:
                groups["b"].append(param)
            elif param.ndim >= 2:
                groups["decay"].append(param)
            else:
                groups["no_decay"].append(param)
        return [
            {"params": groups["decay"], "lr": lr, "weight_decay": decay},
            {"params": groups["no_decay"], "lr": lr, "weight_decay": 0.0},
            {"params": groups["b"], "lr": lr * options.lr_ratio, "weight_decay": decay},
        ]

    def save(self, model: torch.nn.Module, out_dir: Path, recipe: Recipe,
             options: LoraPlusOptions) -> None:
        """Strategy contract, called for the best and the final model: writes a stock PEFT
        adapter that `PeftModel.from_pretrained` loads. Returns nothing."""
        # a PeftModel; torch's stubs only know it as a Module
        model.save_pretrained(out_dir, safe_serialization=True)  # type: ignore[operator]


@hookimpl
def pefttool_register_strategies(register: Callable[[Strategy], None]) -> None:
    """Hook `pefttool_register_strategies` (once, at start-up): registers `loraplus`.
    Returns nothing."""
    register(LoraPlusStrategy())
