"""bitsandbytes 4-bit helpers for the `qlora` strategy.

The CPU guard (why `guard_cpu_4bit` exists): on CPUs with AVX512-BF16, a `bnb.nn.Linear4bit`
forward in eval mode with no grad (an eval pass, `generate()`) repacks its weight for a fused
bf16 inference kernel, and from then on `matmul_4bit` takes `gemv_4bit`, which has no autograd
formula; `.train()` does not undo it. LoRA gradients after an eval pass were measured off by
a median 39 % (max 53 %) on a real model and 99 % on the tiny test model against a dequantized
fp32 reference; layers narrower than one 64-value quant block crash in the repack instead.
Switching the repack off on every Linear4bit keeps the dequantize-then-matmul path, whose
gradients are exact (fp32 compute) or within ~2 % (bf16 compute).
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from pefttool.adapters import quiet_bitsandbytes_import
from pefttool.errors import PefttoolError

if TYPE_CHECKING:  # only for the annotations: importing this module loads no torch
    import torch
    from transformers import BitsAndBytesConfig

    from pefttool.recipe import Recipe
    from pefttool_qlora import QloraOptions

# Heads that must stay in full precision: a quantized classifier cannot train in full
# (PEFT's modules_to_save would copy a frozen 4-bit layer), and an lm_head is kept in full
# precision by transformers' own default, which an explicit skip list replaces.
KEEP_FULL_PRECISION = ("classifier", "score", "lm_head")


def import_bnb() -> ModuleType:
    """Returns the bitsandbytes module, or raises a one-line PefttoolError saying how to get it."""
    try:
        with quiet_bitsandbytes_import():
            import bitsandbytes as bnb
    except Exception as exc:  # ImportError, or a broken native library
        detail = "" if isinstance(exc, ImportError) else f" (import failed: {type(exc).__name__}: {exc})"
        raise PefttoolError(f"QLoRA needs bitsandbytes: pip install bitsandbytes{detail}") from None
    return bnb


def compute_dtype(recipe: Recipe, options: QloraOptions) -> str:
    """Returns the 4-bit matmul dtype's name: the option when set, else the one that
    model.dtype implies (`auto`: bfloat16 on a CUDA device that supports it, else float32)."""
    if options.compute_dtype != "auto":
        return options.compute_dtype
    if recipe.model.dtype == "bfloat16":
        return "bfloat16"
    if recipe.model.dtype == "auto":
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bfloat16"
    return "float32"


def bnb_config(options: QloraOptions, keep: list[str] | None = None,
               compute_dtype: str | None = None) -> BitsAndBytesConfig:
    """Returns the transformers `BitsAndBytesConfig` for a 4-bit load as `options` say; the
    heads in KEEP_FULL_PRECISION and the modules in `keep` are not quantized."""
    import torch
    from transformers import BitsAndBytesConfig

    skip = sorted({*KEEP_FULL_PRECISION, *(keep or [])})
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype or options.compute_dtype),
        llm_int8_skip_modules=skip,
    )


def linear4bit_layers(model: torch.nn.Module) -> list[Any]:
    """Returns every bitsandbytes `Linear4bit` layer of `model` (bitsandbytes is untyped)."""
    bnb = import_bnb()
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def guard_cpu_4bit(model: torch.nn.Module) -> int:
    """Turn off the AVX512-BF16 inference repack on every Linear4bit (see the module doc).
    Returns how many layers were guarded. Safe to call more than once."""
    layers = linear4bit_layers(model)
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)
