"""Small pure helpers that turn numbers into the short strings the screens show."""

from __future__ import annotations

import time
from pathlib import Path

from ..runfolder.summary import format_duration as duration  # one duration format for every output

__all__ = ["count", "display_path", "duration", "learning_rate", "megabytes", "number", "rate", "timestamp"]


def display_path(path: Path, cwd: Path) -> str:
    """`path` relative to `cwd` when it is inside it (shorter, and the same on every machine)."""
    try:
        return str(Path(path).resolve().relative_to(Path(cwd).resolve()))
    except ValueError:
        return str(path)




def count(value: int) -> str:
    """A parameter count, short: 950, 3.9K, 22.7M, 1.1B."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:.1f}{suffix}"
    return str(value)


def number(value: float | None, digits: int = 4) -> str:
    """A metric or loss: fixed digits, or '-' when unknown."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def rate(value: float | None) -> str:
    """Tokens or samples per second: '1,234/s'."""
    if value is None:
        return "-"
    return f"{value:,.0f}/s" if value >= 10 else f"{value:.1f}/s"


def megabytes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.2f} GiB" if value >= 1024 else f"{value:.0f} MiB"


def timestamp(unix: float) -> str:
    """Local month-day and time, for the Runs table ('' for an unknown time)."""
    if not unix:
        return ""
    return time.strftime("%m-%d %H:%M", time.localtime(unix))


def learning_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}"


def plural(n: object, noun: str) -> str:
    """`1 epoch`, `3 epochs` (a noun made plural with an s)."""
    return f"{n} {noun}" if str(n) == "1" else f"{n} {noun}s"
