"""Built-in strategy `full`: every parameter of the model trains; the whole model is saved."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pefttool.hookspecs import hookimpl
from pefttool.strategy import Strategy, StrategyOptions

if TYPE_CHECKING:  # only for the annotations: a plugin's import must stay light (no torch)
    import torch

    from pefttool.recipe import Recipe


class FullOptions(StrategyOptions):
    """`full` has no options of its own: the learning rate and the rest are in [train]."""


class FullFineTune(Strategy):
    """Full fine-tuning: `wrap` unfreezes every parameter, `save` writes the whole model
    (config.json + model.safetensors) that `AutoModel...from_pretrained` loads."""

    name = "full"
    description = "train every parameter (most memory, no adapter)"
    compare_in_plan = True
    Options = FullOptions

    def wrap(self, model: torch.nn.Module, recipe: Recipe, options: FullOptions) -> torch.nn.Module:
        """Strategy contract, called once after loading: returns the same model with every
        parameter set to train."""
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model: torch.nn.Module, out_dir: Path, recipe: Recipe, options: FullOptions) -> None:
        """Strategy contract, called for the best and the final model: writes the full model
        to `out_dir` as safetensors. Returns nothing."""
        # A GGUF-loaded model is plain floats once loaded, but transformers still marks it
        # quantized and refuses to save it; models.load_model clears that, and so do we here
        # for a model loaded some other way.
        quantizer = getattr(model, "hf_quantizer", None)
        config = getattr(quantizer, "quantization_config", None)
        if getattr(config, "quant_method", None) == "gguf":
            from pefttool.models import forget_gguf_quantization

            forget_gguf_quantization(model)
        # a transformers model; torch's stubs only know it as a Module
        model.save_pretrained(out_dir, safe_serialization=True)  # type: ignore[operator]


@hookimpl
def pefttool_register_strategies(register: Callable[[Strategy], None]) -> None:
    """Hook `pefttool_register_strategies` (once, at start-up): registers `full`. Returns nothing."""
    register(FullFineTune())
