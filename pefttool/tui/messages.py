"""Messages the UI's workers send to its screens: small dataclasses, one per kind of result.

Workers run in threads; `post_message` is the one thread-safe way back into the UI, so
every result of blocking work arrives as one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from ..catalog import RecipeEntry
from ..runfolder.summary import RunState


@dataclass
class RecipesFound(Message):
    """The recipe catalog was read (built-in and local recipes, each validated)."""

    entries: list[RecipeEntry]


@dataclass
class RecipeChecked(Message):
    """An edited recipe was validated; `problems` is empty when it is valid.

    `revision` says which edit it belongs to, so a slow answer to an old edit is ignored.
    """

    revision: int
    problems: list[str]


@dataclass
class PlanEstimated(Message):
    """`pefttool plan`'s one-line estimate for an edited recipe (`revision`), or why there is
    none (a model whose config cannot be read, say)."""

    revision: int
    text: str


@dataclass
class PluginsLoaded(Message):
    """The plugin host loaded: one row per plugin, or the `error` that stopped it loading."""

    rows: list[dict[str, Any]]
    strategies: dict[str, dict[str, Any]]
    error: str | None = None


@dataclass
class RunsListed(Message):
    """The runs under the output root were summarized (newest first), or could not be read."""

    runs: list[RunState]
    error: str | None = None


@dataclass
class RunEventsPending(Message):
    """New events from a followed run wait in the dashboard's queue.

    Only one of these is in flight at a time however fast the run writes: the dashboard
    drains the whole queue when it handles it and repaints once (coalescing).
    """


@dataclass
class RunProcessEnded(Message):
    """The followed run's process is gone: the UI's child exited, or an attached run's pid died."""

    returncode: int | None       # None: not our child (attached), so its status is unknown
    stderr_tail: str
