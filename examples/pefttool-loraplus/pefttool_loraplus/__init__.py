"""Strategy `loraplus`: LoRA with a higher learning rate for the B matrices (LoRA+).

LoRA+ (Hayou, Ghosh, Yu, 2024) trains the adapters' B matrices `lr_ratio` times faster than the
A matrices, which speeds up and often improves LoRA at no memory cost. It needs nothing but
optimizer parameter groups, so it uses two parts of the strategy contract: `wrap` (PEFT LoRA,
through `pefttool.peft_wrap`) and `param_groups`.

Everything heavy (torch, peft) is imported inside the methods, so installing this plugin does
not slow down `pefttool validate` or `pefttool plugins`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pefttool.hookspecs import hookimpl
from pefttool.strategy import Strategy, StrategyOptions


class LoraPlusOptions(StrategyOptions):
    r: int = Field(8, ge=1, le=1024, description="adapter rank: higher learns more, costs memory")
    alpha: float = Field(16, gt=0, description="scale of the adapter update (alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt; all-linear finds every projection")
    lr_ratio: float = Field(16.0, ge=1, le=1024,
                            description="B matrices learn lr_ratio × train.lr (the paper: ~16)")


class LoraPlusStrategy(Strategy):
    name = "loraplus"
    description = "LoRA+ : LoRA with B matrices at lr_ratio × the learning rate (PEFT)"
    Options = LoraPlusOptions

    def wrap(self, model: Any, recipe: Any, options: LoraPlusOptions) -> Any:
        from peft import LoraConfig

        import pefttool

        config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                            target_modules=options.target_modules)
        return pefttool.peft_wrap(model, config, recipe)

    def param_groups(self, model: Any, recipe: Any, options: LoraPlusOptions) -> list[dict[str, Any]]:
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

    def save(self, model: Any, out_dir: Any, recipe: Any, options: Any) -> None:
        model.save_pretrained(out_dir, safe_serialization=True)  # a stock PEFT adapter


@hookimpl
def pefttool_register_strategies(register):
    register(LoraPlusStrategy())
