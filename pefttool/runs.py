"""What is known about a run from its directory alone (its `events.jsonl`).

Used by `pefttool runs`, `pefttool resume` and the TUI's Runs screen; it never imports the
engine, so browsing runs stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .events import EVENTS_FILE, EndEvent, EvalEvent, Event, EventFollower, StartEvent, StepEvent


@dataclass
class RunSummary:
    path: Path
    status: str = "unknown"          # running | completed | early_stopped | interrupted | failed | crashed
    name: str = ""
    strategy: str = ""
    metric: str | None = None
    best: float | None = None
    step: int = 0
    total_steps: int = 0
    started: float = 0.0
    duration_s: float = 0.0
    pid: int | None = None
    skipped_lines: int = 0           # lines of events.jsonl that were not events (damaged)
    events: list[Event] = field(default_factory=list, repr=False)


def summarize(run_dir: Path) -> RunSummary:
    """A run's state from its events; a damaged line is skipped and counted, never fatal."""
    run = RunSummary(path=Path(run_dir))
    follower = EventFollower(run.path / EVENTS_FILE)
    events = follower.poll()
    run.skipped_lines = follower.skipped
    last_time = 0.0
    for event in events:
        try:
            last_time = _fold(run, event, last_time)
        except (TypeError, AttributeError, ValueError):  # a field of the wrong type
            run.skipped_lines += 1
            continue
        run.events.append(event)
    if run.status == "running" and not pid_alive(run.pid):
        run.status = "crashed"
    run.duration_s = max(0.0, last_time - run.started) if run.started else 0.0
    return run


def _fold(run: RunSummary, event: Event, last_time: float) -> float:
    """Fold one event into the summary; returns the latest event time."""
    last_time = max(last_time, float(event.time))
    if isinstance(event, StartEvent):
        run.name = str(event.recipe.get("name", ""))
        run.strategy = event.strategy
        run.total_steps = event.total_steps
        run.pid = event.pid
        run.started = run.started or event.time
        run.status = "running"
    elif isinstance(event, StepEvent):
        run.step = event.step
    elif isinstance(event, EvalEvent) and event.step > 0:  # step 0: the baseline, not a best
        run.metric, run.best = event.metric, event.best
    elif isinstance(event, EndEvent):
        run.status = event.status
        run.step = event.step
        if event.best is not None:
            run.metric, run.best = event.metric, event.best
    return last_time


def list_runs(root: Path) -> list[RunSummary]:
    """Every run directory directly under `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [summarize(p) for p in root.iterdir() if (p / EVENTS_FILE).is_file()]
    return sorted(runs, key=lambda r: r.started, reverse=True)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
