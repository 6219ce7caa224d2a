"""Errors pefttool knows how to explain in one line.

Every error the user can cause (a recipe, data, a model path, a plugin) is raised as a
`PefttoolError`; the CLI prints its message on one line and exits with `exit_code`. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib


def one_line(exc: BaseException, limit: int | None = 200) -> str:
    """An exception's message on one line (its line breaks folded), at most `limit` characters
    (None: all of it); its type's name when it has no message. For the CLI's one-line errors."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


class PefttoolError(Exception):
    """A problem the user can fix; the message says what, where, and the fix."""

    exit_code = 2


class RecipeError(PefttoolError):
    """A recipe that does not validate; holds every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{source}: {problems[0]}")
        else:
            lines = [f"{source}: {len(problems)} problems"] + [f"  - {p}" for p in problems]
            super().__init__("\n".join(lines))


class PluginError(PefttoolError):
    """A plugin failed to load, misnamed a hook, clashed with another, or raised in a hook."""


class DataError(PefttoolError):
    """The data files cannot be turned into a dataset (file, row and column are named)."""


class ModelError(PefttoolError):
    """The model path or its files cannot be loaded as asked."""


class OutputError(PefttoolError):
    """The output directory cannot be written as asked (exists, not writable, disk full)."""


class TrainingError(PefttoolError):
    """Training cannot go on (a NaN loss, say); the last good checkpoint is kept."""

    exit_code = 3


def did_you_mean(word: str, choices: list[str]) -> str:
    """` (did you mean 'X'?)` for the closest choice (a case-only difference counts), or ''."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        close = [c for c in choices if c.lower() == word.lower()][:1]
    return f" (did you mean '{close[0]}'?)" if close else ""
