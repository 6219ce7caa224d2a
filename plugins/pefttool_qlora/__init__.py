"""Built-in strategy `qlora`: the base model in 4-bit (bitsandbytes) with LoRA adapters on top."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import pefttool
from pefttool_lora import LoraOptions, LoraStrategy


class QloraOptions(LoraOptions):
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit format; nf4 suits weights")
    double_quant: bool = Field(True, description="quantize the scales too (saves ~0.4 bit/param)")
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the 4-bit matmuls: bfloat16 is faster on GPU")


class QloraStrategy(LoraStrategy):
    name = "qlora"
    description = "4-bit quantized base (bitsandbytes NF4/FP4) + LoRA adapters"
    Options = QloraOptions

    # check / load_kwargs / wrap are filled in by the engine issue (see pefttool_qlora.quant).


@pefttool.hookimpl
def pefttool_register_strategies(register):
    register(QloraStrategy())
