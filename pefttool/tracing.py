"""`PEFTTOOL_TRACE_HOOKS=1`: one stderr line per call into a plugin, naming what was called
(a hook, or a strategy's method), which plugin answered, and how long it took."""

from __future__ import annotations

import os
import sys
import time

TRACE_ENV = "PEFTTOOL_TRACE_HOOKS"


def tracing() -> bool:
    """Whether calls into plugins are traced (read on every call, so a test can switch it)."""
    return bool(os.environ.get(TRACE_ENV))


def trace(what: str, plugin: str, began: float) -> None:
    """Print `[hook] WHAT → PLUGIN: N ms` for a call that started at `began` (perf_counter)."""
    print(f"[hook] {what} → {plugin}: {1000 * (time.perf_counter() - began):.2f} ms", file=sys.stderr)
