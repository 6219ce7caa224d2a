"""Shared LoRA wrapping for the built-in `lora` and `qlora` strategies (and plugins that want it).

* `target_modules = "all-linear"` adapts every linear projection PEFT finds, minus the output
  layer: a causal LM's `lm_head` never gets LoRA, nor a classifier's head.
* Classification: PEFT's SEQ_CLS task adds the head (`classifier`, `score`) to
  `modules_to_save`, so the new head trains in full and is saved with the adapter.
* A `target_modules` entry that names no layer of the model is a recipe error listing the
  names that exist (PEFT itself only complains when *none* match).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RecipeError
from .quiet import quiet_bitsandbytes_import

if TYPE_CHECKING:  # annotations only: importing this module loads no torch or peft
    import torch
    from peft import PeftConfig

    from .recipe import Recipe

# The heads PEFT's SEQ_CLS task trains in full (peft.PeftModelForSequenceClassification).
SEQ_CLS_HEADS = ("classifier", "score")


#: The name of the frozen copy of `model.adapter` (the model as it was given: a preference
#: run's reference); the adapter that trains keeps PEFT's default name.
REFERENCE_ADAPTER = "reference"
#: set on a model whose adapter continues `model.adapter` (the folder it came from)
CONTINUED_FROM = "_pefttool_adapter_from"


def add_lora(model: torch.nn.Module, recipe: Recipe, options: Any) -> torch.nn.Module:
    """Wrap `model` with PEFT LoRA adapters as `options` (LoraOptions) say, or with the
    recipe's `model.adapter` to train further (`continue_adapter`)."""
    from .tasks import get_task

    if recipe.model.adapter is not None:
        return continue_adapter(model, recipe)
    with quiet_bitsandbytes_import():
        from peft import LoraConfig

    target = options.target_modules
    if target != "all-linear":
        target = list(target)
        _check_targets(model, recipe, target)
    config = LoraConfig(
        task_type=get_task(recipe).peft_type(),
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=target,
        use_rslora=options.rslora,
        use_dora=options.dora,
        modules_to_save=list(options.modules_to_save) if options.modules_to_save else None,
    )
    try:
        return peft_wrap(model, config, recipe)
    except ValueError as exc:
        text = str(exc)
        if "not found in the base model" in text or "Target module" in text:
            raise _target_error(model, recipe, options.target_modules,
                                "matches no linear layer of this model") from exc
        raise


def continue_adapter(model: torch.nn.Module, recipe: Recipe) -> torch.nn.Module:
    """`model.adapter` on the base `model`: that adapter, trainable (its own rank, alpha and
    targets: the [method] LoRA keys do not apply), and a frozen copy of it named
    REFERENCE_ADAPTER, the model as it was given. On the meta device (`pefttool plan`) only
    its shapes."""
    from .locations import adapter_folder

    with quiet_bitsandbytes_import():
        from peft import PeftConfig, PeftModel, get_peft_model

    folder = adapter_folder(recipe.resolve_path(recipe.model.adapter or ""))
    if folder is None:   # (validation said so; the folder changed since)
        raise RecipeError(recipe.source, [f"model.adapter: '{recipe.model.adapter}' holds no PEFT adapter"])
    config = PeftConfig.from_pretrained(str(folder))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
        warnings.filterwarnings("ignore", category=UserWarning, message=".*tie_word_embeddings.*")
        try:
            if next(model.parameters()).device.type == "meta":
                peft_model = get_peft_model(model, config)
            else:
                peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
                peft_model.load_adapter(str(folder), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
                peft_model.set_adapter("default")
        except (RuntimeError, ValueError, KeyError) as exc:
            raise RecipeError(recipe.source, [
                f"model.adapter: the adapter in {folder} does not fit model.path "
                f"'{recipe.model.path}' ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                f"use the base model it was trained on"]) from None
    setattr(peft_model, CONTINUED_FROM, str(folder))
    return peft_model


def peft_wrap(model: torch.nn.Module, peft_config: PeftConfig, recipe: Recipe) -> torch.nn.Module:
    """Wrap `model` with any PEFT config (LoRA, IA³, prefix tuning...) the way the built-ins do.

    Sets the config's `task_type` from the recipe when it is unset (SEQ_CLS for classification,
    so PEFT trains and saves the new head; CAUSAL_LM otherwise), silences the known harmless
    warnings (bitsandbytes' CPU kernel notice, transformers' gradient-checkpointing
    FutureWarning), and raises a one-line `RecipeError` if a classifier's head would stay
    frozen. Returns the `PeftModel`. Public as `pefttool.peft_wrap` for strategy plugins.
    """
    from .tasks import get_task

    with quiet_bitsandbytes_import():
        from peft import get_peft_model

    task = get_task(recipe)
    if getattr(peft_config, "task_type", None) is None:
        peft_config.task_type = task.peft_type()
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
        peft_model = get_peft_model(model, peft_config)
    if task.has_labels and not any(p.requires_grad for n, p in peft_model.named_parameters()
                                  if "modules_to_save" in n):
        # a head named other than classifier/score would stay frozen and random
        heads = ", ".join(head_candidates(model)) or "?"
        raise RecipeError(recipe.source, [
            f"method.modules_to_save: this model's classification head is not named "
            f"{' or '.join(SEQ_CLS_HEADS)}, so it would stay untrained; name it (e.g. "
            f"modules_to_save = [\"{heads.split(', ')[0]}\"]); last layers: {heads}"])
    return peft_model


def _check_targets(model: Any, recipe: Any, targets: list[str]) -> None:
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets
               if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        raise _target_error(model, recipe, missing, "names no layer of this model")


def _target_error(model: Any, recipe: Any, bad: Any, why: str) -> RecipeError:
    shown = bad if isinstance(bad, str) else ", ".join(repr(b) for b in bad)
    return RecipeError(recipe.source, [
        f"method.target_modules: {shown} {why}; use \"all-linear\" or names from: "
        f"{', '.join(linear_module_names(model))}"])


def linear_module_names(model: Any) -> list[str]:
    """The distinct leaf names of the model's linear layers (what target_modules can name)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if name and isinstance(mod, torch.nn.Linear)}
    return sorted(names)


def head_candidates(model: Any) -> list[str]:
    """Top-level child modules after the backbone (where a classification head would be)."""
    children = [name for name, _ in model.named_children()]
    return children[1:] if len(children) > 1 else children


def save_adapter(model: torch.nn.Module, out_dir: str | Path, recipe: Recipe) -> None:
    """Save a PEFT adapter whose `base_model_name_or_path` is the recipe's own location
    (`package:NAME/inner`, a hub id, or the path as written), not this machine's absolute
    path into site-packages: the adapter then means the same on another machine. pefttool's
    own commands load the base from the run's recipe; stock PEFT users pass the base model
    themselves (`PeftModel.from_pretrained(AutoModel...from_pretrained(BASE), ADAPTER)`)."""
    import json

    # a transformers/PEFT model; torch types it as a Module

    # the adapter that trains only (not the frozen copy of model.adapter, REFERENCE_ADAPTER)
    only = {"selected_adapters": ["default"]} if REFERENCE_ADAPTER in getattr(model, "peft_config", {}) else {}
    model.save_pretrained(out_dir, safe_serialization=True, **only)  # type: ignore[operator]
    config = Path(out_dir) / "adapter_config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = recipe.model.path
        config.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
