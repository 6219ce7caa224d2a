"""What validating a recipe needs from the plugins (their option models), as plain data: the
recipe module takes it as a parameter and the plugin host produces it, so neither imports the
other's code for it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    from .tasks.base import Task


@dataclass(frozen=True)
class PluginSchemas:
    """What validating a recipe needs from the plugins, handed in rather than looked up.

    `strategies`: each strategy name → its options model (`Strategy.Options`);
    `tasks`: each task type → its task object (`pefttool.Task`, with its `Options` model);
    `settings`: each loaded plugin's name → its `PluginOptions` model (None: it takes none);
    `left_out`: installed plugins that `PEFTTOOL_PLUGINS` did not load (named in the error
    for an unknown strategy, since one of them may add it); `broken`: installed plugins that
    failed to load, with their error (named likewise).
    """

    strategies: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    tasks: Mapping[str, Task] = field(default_factory=dict)
    settings: Mapping[str, type[BaseModel] | None] = field(default_factory=dict)
    left_out: tuple[str, ...] = ()
    broken: Mapping[str, str] = field(default_factory=dict)   # plugin name → why it did not load

    def options_for(self, strategy: str) -> type[BaseModel] | None:
        """The options model of strategy `strategy`, or None when no plugin registered it."""
        return self.strategies.get(strategy)


class HasSchemas(Protocol):
    """Anything that can say what its plugins' schemas are (`pefttool.plugins.PluginHost`)."""

    def schemas(self) -> PluginSchemas: ...
