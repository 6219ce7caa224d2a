"""A third-party strategy, `freeze-lower`: freeze the embeddings and the lowest encoder layers,
train everything above them. It declares its own options, which recipes must get right."""

from __future__ import annotations

import re

from pydantic import Field

import pefttool
from pefttool.strategy import Strategy, StrategyOptions


class FreezeLowerOptions(StrategyOptions):
    frozen_layers: int = Field(2, ge=0, le=256, description="how many of the lowest layers to freeze")
    freeze_embeddings: bool = Field(True, description="also freeze the embedding table")


class FreezeLower(Strategy):
    name = "freeze-lower"
    description = "freeze the embeddings and the lowest N layers; train the rest in full"
    Options = FreezeLowerOptions

    def wrap(self, model, recipe, options):
        layer = re.compile(r"\.layers?\.(\d+)\.")
        for param_name, param in model.named_parameters():
            found = layer.search(param_name)
            if found and int(found.group(1)) < options.frozen_layers:
                param.requires_grad = False
            elif options.freeze_embeddings and "embeddings" in param_name:
                param.requires_grad = False
        return model


@pefttool.hookimpl
def pefttool_register_strategies(register):
    register(FreezeLower())
