"""Built-in strategy `full`: every parameter of the model trains."""

from __future__ import annotations

import pefttool
from pefttool.strategy import Strategy, StrategyOptions


class FullOptions(StrategyOptions):
    """`full` has no options of its own: the learning rate and the rest are in [train]."""


class FullFineTune(Strategy):
    name = "full"
    description = "train every parameter (most memory, no adapter)"
    Options = FullOptions


@pefttool.hookimpl
def pefttool_register_strategies(register):
    register(FullFineTune())
