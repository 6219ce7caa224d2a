"""Built-in strategy `full`: every parameter of the model trains."""

from __future__ import annotations

from pefttool.hookspecs import hookimpl
from pefttool.strategy import Strategy, StrategyOptions


class FullOptions(StrategyOptions):
    """`full` has no options of its own: the learning rate and the rest are in [train]."""


class FullFineTune(Strategy):
    name = "full"
    description = "train every parameter (most memory, no adapter)"
    Options = FullOptions

    def wrap(self, model, recipe, options):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model, out_dir, recipe, options):
        # A GGUF-loaded model is plain floats once loaded, but transformers still marks it
        # quantized and refuses to save it; models.load_model clears that, and so do we here
        # for a model loaded some other way.
        if getattr(getattr(model, "hf_quantizer", None), "quantization_config", None) is not None \
                and getattr(model.hf_quantizer.quantization_config, "quant_method", None) == "gguf":
            from pefttool.models import forget_gguf_quantization

            forget_gguf_quantization(model)
        model.save_pretrained(out_dir, safe_serialization=True)


@hookimpl
def pefttool_register_strategies(register):
    register(FullFineTune())
