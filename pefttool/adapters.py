"""Shared LoRA wrapping for the built-in `lora` and `qlora` strategies (and plugins that want it)."""

from __future__ import annotations

from typing import Any

from .errors import RecipeError


def add_lora(model: Any, recipe: Any, options: Any) -> Any:
    """Wrap `model` with PEFT LoRA adapters as `options` (LoraOptions) say."""
    from peft import LoraConfig, TaskType, get_peft_model

    task_type = TaskType.SEQ_CLS if recipe.task.type == "classification" else TaskType.CAUSAL_LM
    config = LoraConfig(
        task_type=task_type,
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        use_rslora=options.rslora,
        use_dora=options.dora,
        modules_to_save=options.modules_to_save,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        if "not found in the base model" in str(exc) or "Target modules" in str(exc):
            raise RecipeError(recipe.source, [
                f"method.target_modules: {options.target_modules!r} matches no layer of this "
                f"model; use \"all-linear\" or names from: {', '.join(linear_module_names(model))}"
            ]) from exc
        raise


def linear_module_names(model: Any) -> list[str]:
    """The distinct leaf names of the model's linear layers (what target_modules can name)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear)}
    return sorted(names)
