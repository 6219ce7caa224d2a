"""Built-in strategy `qlora`: the base model in 4-bit (bitsandbytes) with LoRA adapters on top."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from pefttool.hookspecs import hookimpl
from pefttool.strategy import QuantizedLayout, Strategy
from pefttool_lora import LoraOptions, LoraStrategy

if TYPE_CHECKING:  # only for the annotations: a plugin's import must stay light (no torch)
    import torch

    from pefttool.recipe import Recipe


class QloraOptions(LoraOptions):
    """The recipe's `[method]` keys for `qlora`: LoRA's, plus how the base is quantized."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit format; nf4 suits weights")
    double_quant: bool = Field(True, description="quantize the scales too (saves ~0.4 bit/param)")
    compute_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="dtype of the 4-bit matmuls; auto follows model.dtype (bfloat16 "
        "when the model loads in bfloat16, or model.dtype = auto on a bf16-capable GPU)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward: less memory, ~30 % slower")


class QloraStrategy(LoraStrategy):
    """The base is quantized on load (`load_kwargs` → BitsAndBytesConfig; classifier/score/
    lm_head and `modules_to_save` stay full precision), then `wrap` runs PEFT's
    `prepare_model_for_kbit_training`, guards the CPU 4-bit layers against the AVX512-BF16
    repack (see `quant.guard_cpu_4bit`) and adds LoRA. `save` (LoRA's) writes a PEFT adapter."""

    name = "qlora"
    description = "4-bit quantized base (bitsandbytes NF4/FP4) + LoRA adapters"
    Options = QloraOptions
    memory_first = True  # a causal LM's long sequences: gradient checkpointing on by default

    def check(self, recipe: Recipe, options: QloraOptions) -> None:
        """Strategy contract, called before anything loads: raises a one-line `PefttoolError`
        when bitsandbytes is missing or broken, or the model is a GGUF file. Returns nothing."""
        from pefttool.errors import PefttoolError

        from .quant import import_bnb

        import_bnb()
        if recipe.model.gguf_file:
            raise PefttoolError("method.strategy: qlora cannot re-quantize a GGUF model (it loads "
                                "already dequantized); use strategy = \"lora\" for GGUF models")

    def load_kwargs(self, recipe: Recipe, options: QloraOptions) -> dict[str, Any]:
        """Strategy contract, called before `from_pretrained`: returns
        `{"quantization_config": BitsAndBytesConfig(...)}` for a 4-bit load."""
        from .quant import bnb_config, compute_dtype

        return {"quantization_config": bnb_config(options, keep=options.modules_to_save,
                                                  compute_dtype=compute_dtype(recipe, options))}

    # The engine passes a strategy its own `Options`, so narrowing LoRA's type is safe here.
    def wrap(self, model: torch.nn.Module, recipe: Recipe,  # type: ignore[override]
             options: QloraOptions) -> torch.nn.Module:
        """Strategy contract, called once after the 4-bit load: returns the `PeftModel` with
        LoRA adapters over the quantized base, ready for k-bit training."""
        from peft import prepare_model_for_kbit_training

        from pefttool.adapters import add_lora

        from .quant import guard_cpu_4bit

        guard_cpu_4bit(model)
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=options.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        model = add_lora(model, recipe, options)
        guard_cpu_4bit(model)  # idempotent; covers layers PEFT may have re-created
        return model


    def quantized_layout(self, recipe: Recipe, options: QloraOptions) -> QuantizedLayout:
        """Strategy contract, for `pefttool plan`: the linear layers in 4-bit as `load_kwargs`
        asks bitsandbytes for them (the heads and `modules_to_save` kept in full precision)."""
        from .quant import KEEP_FULL_PRECISION, compute_dtype

        return QuantizedLayout(format=options.quant_type, double_quant=options.double_quant,
                               compute_dtype=compute_dtype(recipe, options),
                               keep=(*KEEP_FULL_PRECISION, *(options.modules_to_save or [])))

    def wrap_for_estimate(self, model: torch.nn.Module, recipe: Recipe,
                          options: QloraOptions) -> torch.nn.Module:
        """Strategy contract, for `pefttool plan` on a meta model: LoRA's wrap (the k-bit
        preparation and the CPU guard need real 4-bit layers; they add no trainable parameter)."""
        return LoraStrategy.wrap(self, model, recipe, options)

    def for_inference(self, model: torch.nn.Module, recipe: Recipe,
                      options: QloraOptions) -> torch.nn.Module:
        """Strategy contract, called when a finished run's 4-bit base loads to answer: the CPU
        4-bit layers are guarded against the AVX512-BF16 repack (see `quant.guard_cpu_4bit`)."""
        from .quant import guard_cpu_4bit

        guard_cpu_4bit(model)
        return model


@hookimpl
def pefttool_register_strategies(register: Callable[[Strategy], None]) -> None:
    """Hook `pefttool_register_strategies` (once, at start-up): registers `qlora`. Returns nothing."""
    register(QloraStrategy())
