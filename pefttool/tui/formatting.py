"""Small pure helpers that turn numbers into the short strings the screens show."""

from __future__ import annotations

import time
from pathlib import Path


def display_path(path: Path, cwd: Path) -> str:
    """`path` relative to `cwd` when it is inside it (shorter, and the same on every machine)."""
    try:
        return str(Path(path).resolve().relative_to(Path(cwd).resolve()))
    except ValueError:
        return str(path)


def duration(seconds: float | None) -> str:
    """62 → '1m 02s'; 3700 → '1h 01m'; None → '-'."""
    if seconds is None or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


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
