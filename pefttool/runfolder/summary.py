"""What is known about a run from its directory alone: the one fold of its `events.jsonl`.

`RunState` is the only place events become a run's state. `pefttool runs`, `pefttool resume`,
the TUI's Runs screen and its dashboard all read runs through it, so they agree on status,
step, duration and metrics. It never imports the engine (or textual), so browsing stays fast.

A run may span several processes: `pefttool resume` appends a new start event to the same
`events.jsonl`. A start after an end means the run continues; durations and speeds cover
every segment, not just the last one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..events import (
    EVENTS_FILE,
    CheckpointEvent,
    EndEvent,
    EvalEvent,
    Event,
    EventFollower,
    LogEvent,
    PhaseEvent,
    StartEvent,
    StepEvent,
)


@dataclass
class RunState:
    """Everything read so far from one run's `events.jsonl`.

    With `keep_history` (the dashboard) every step, eval, log and checkpoint is kept (the
    loss curve wants all points); without it (lists of runs) only the figures are.
    """

    run_dir: Path
    keep_history: bool = True
    start: StartEvent | None = None       # the latest start (a resume adds one)
    first_start: StartEvent | None = None
    segments: int = 0                     # processes that worked on the run (1 + resumes)
    last_step: StepEvent | None = None
    steps: list[StepEvent] = field(default_factory=list, repr=False)
    evals: list[EvalEvent] = field(default_factory=list, repr=False)
    logs: list[LogEvent] = field(default_factory=list, repr=False)
    checkpoints: list[CheckpointEvent] = field(default_factory=list, repr=False)
    last_eval: EvalEvent | None = None
    baseline: EvalEvent | None = None     # the evaluation before training ("before", never "best")
    best_eval: EvalEvent | None = None    # the best evaluation after training started
    phase: PhaseEvent | None = None       # what the run is doing between steps (None: training)
    end: EndEvent | None = None
    bad_lines: int = 0                    # lines of events.jsonl that were not events (skipped)
    last_time: float = 0.0
    _closed_s: float = 0.0                # wall time of the segments that have ended
    _open_since: float | None = None      # the start of the segment still going (no end yet)
    _tokens: float = 0.0                  # tokens trained, summed from the step windows
    _token_s: float = 0.0
    _prev_elapsed: float = 0.0
    _pid: int | None = None
    redo: tuple[int, int] | None = None    # a resume's (checkpoint step, step reached before)
    _reached: int = 0                     # the furthest step reported (steps and ends)
    _first_time: float = 0.0              # the first event's (a run stopped while loading has no start)

    @property
    def path(self) -> Path:
        return self.run_dir

    def apply(self, events: Iterable[Event]) -> None:
        """Fold events in; one with a field of the wrong type is skipped and counted."""
        for event in events:
            try:
                self._apply_one(event)
            except (TypeError, ValueError, AttributeError):
                self.bad_lines += 1

    def _apply_one(self, event: Event) -> None:
        if isinstance(event, StepEvent):
            self.last_step = event
            self.phase = None
            elapsed = float(event.elapsed_s)
            window = elapsed - self._prev_elapsed
            if window > 0:
                self._tokens += float(event.tokens_per_s) * window
                self._token_s += window
            self._prev_elapsed = elapsed
            if self.keep_history:
                self.steps.append(event)
        elif isinstance(event, EvalEvent):
            self.last_eval = event
            if event.before or event.step == 0:   # step 0: the baseline (older runs lack `before`)
                self.baseline = event
            elif event.is_best or self.best_eval is None:
                self.best_eval = event
            if self.keep_history:
                self.evals.append(event)
        elif isinstance(event, LogEvent):
            if self.keep_history:
                self.logs.append(event)
        elif isinstance(event, CheckpointEvent):
            if self.keep_history:
                self.checkpoints.append(event)
        elif isinstance(event, PhaseEvent):
            self.phase = event
            if event.phase == "loading" and self.end is not None:
                self.end = None    # a resume is loading: the run continues
            self._pid = event.pid
        elif isinstance(event, StartEvent):
            if self._open_since is not None:
                # the previous process died without an end event: its time runs to its
                # last event
                self._closed_s += max(0.0, self.last_time - self._open_since)
            self._open_since = float(event.time)
            self.start = event
            self._pid = event.pid
            self.first_start = self.first_start or event
            self.segments += 1
            self.end = None        # a start after an end: the run continues (resumed)
            self.phase = None
            reached = self._reached
            self.redo = (event.resumed_from_step, reached) if 0 < event.resumed_from_step < reached \
                else None
            self._prev_elapsed = 0.0 if self.last_step is None else float(self.last_step.elapsed_s)
        elif isinstance(event, EndEvent):
            self.end = event
            self.phase = None
            self._closed_s += max(0.0, float(event.duration_s))
            self._open_since = None
        if isinstance(event, (StepEvent, EndEvent)):
            self._reached = max(self._reached, int(event.step))
        self.last_time = max(self.last_time, float(event.time))
        if not self._first_time:
            self._first_time = float(event.time)

    # -- what screens and commands show

    @property
    def name(self) -> str:
        start = self.first_start
        if start is not None:
            return str(start.recipe.get("name") or self.run_dir.name)
        return self.run_dir.name

    @property
    def strategy(self) -> str:
        return self.start.strategy if self.start is not None else ""

    @property
    def started(self) -> float:
        """When the run first started (Unix seconds; 0 when unknown): its first start event,
        or its first event of any kind (a run stopped or failed while loading has no start)."""
        return self.first_start.time if self.first_start is not None else self._first_time

    @property
    def pid(self) -> int | None:
        """The process working on the run now (a resume's, once it began loading)."""
        return self._pid

    @property
    def status(self) -> str:
        """running | completed | early_stopped | interrupted | failed | crashed | unknown."""
        if self.end is not None:
            return self.end.status
        if self._pid is None:
            return "unknown"
        return "running" if pid_alive(self._pid) else "crashed"

    @property
    def step(self) -> int:
        """The optimizer steps done: the end's, else the latest step event's or the step the
        run is evaluating or checkpointing at (step events come every train.log_every steps;
        a phase names its step at once), never below where the latest start resumed."""
        if self.end is not None:
            return self.end.step
        floor = self.start.resumed_from_step if self.start else 0
        seen = [floor]
        if self.last_step is not None and self.last_step.step >= floor and (
                self.start is None or self.last_step.time >= self.start.time):  # (this segment's)
            seen.append(self.last_step.step)
        if self.phase is not None:   # a resume still loading: where the run had got to
            seen.append(self._reached if self.phase.phase == "loading" else self.phase.step)
        return max(seen)

    @property
    def trained_again(self) -> tuple[int, int] | None:
        """(from, to) when the latest resume went back to a checkpoint before steps the run
        had already reported (they are trained again), while it has not yet passed them."""
        if self.redo is None or self.step >= self.redo[1]:
            return None
        return self.redo

    @property
    def total_steps(self) -> int:
        if self.start is not None:
            return self.start.total_steps
        return self.last_step.total_steps if self.last_step else 0

    @property
    def metric(self) -> str | None:
        for event in (self.last_eval, self.end):
            if event is not None and event.metric:
                return event.metric
        return None

    @property
    def best(self) -> float | None:
        """The best evaluation during training; the baseline before training never counts."""
        if self.end is not None and self.end.best is not None:
            return self.end.best
        return self.best_eval.value if self.best_eval is not None else None

    @property
    def best_step(self) -> int | None:
        if self.end is not None and self.end.best_step is not None:
            return self.end.best_step
        return self.best_eval.step if self.best_eval is not None else None

    @property
    def before(self) -> float | None:
        """The ruling metric before training (the baseline evaluation), if there was one."""
        return self.baseline.value if self.baseline is not None else None

    @property
    def duration_s(self) -> float:
        """Wall time of the whole run: every segment (the first run and each resume), not the
        time between them."""
        # Ended (a run that failed while loading too: its end's time), or a resume still
        # loading (no new time yet).
        if self._open_since is None:
            return self._closed_s
        return self._closed_s + max(0.0, self.last_time - self._open_since)

    def time_before(self, start: StartEvent) -> float:
        """The run's wall time before `start` (a resume's start event, read already or not)."""
        if self.start is not None and (self.start.pid, self.start.time) == (start.pid, start.time):
            return self._closed_s
        return self.duration_s

    @property
    def tokens_per_s(self) -> float | None:
        """Mean training speed over the whole run (not just the latest window or segment)."""
        return self._tokens / self._token_s if self._token_s > 0 else None


def format_duration(seconds: float | None) -> str:
    """The one way durations are written (headless lines, `pefttool runs`, the TUI):
    62 → '1m 02s'; 3700 → '1h 01m'; 9 → '9s'; unknown → '-'."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def summarize(run_dir: Path, keep_history: bool = False) -> RunState:
    """The state of the run in `run_dir`; lines of its events.jsonl that are not events are
    skipped and counted in `bad_lines`."""
    state = RunState(run_dir=Path(run_dir), keep_history=keep_history)
    follower = EventFollower(state.run_dir / EVENTS_FILE)
    events = follower.poll()
    state.bad_lines = follower.skipped
    state.apply(events)
    return state


def is_run_dir(path: Path) -> bool:
    return (Path(path) / EVENTS_FILE).is_file()


def list_runs(root: Path, cache: dict[Path, tuple[tuple[int, int], RunState]] | None = None
              ) -> list[RunState]:
    """Every run directory directly under `root`, newest first (by when each first started).

    With a `cache` (the TUI's Runs screen refreshes every few seconds, maybe while a run
    trains on the same cores), a run is reread only when its events.jsonl changed, or while it
    is running (its process may have died). One unreadable run never hides the others: it is
    listed with status `unknown` and its `bad_lines` counted.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    cache = {} if cache is None else cache
    runs = []
    for path in root.iterdir():
        events = path / EVENTS_FILE
        try:
            stat = events.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        key = (stat.st_mtime_ns, stat.st_size)
        cached = cache.get(path)
        if cached is None or cached[0] != key or cached[1].status == "running":
            try:
                state = summarize(path)
            except (OSError, ValueError, TypeError, AttributeError, KeyError):
                state = RunState(run_dir=path, keep_history=False, bad_lines=1)
            cache[path] = (key, state)
        runs.append(cache[path][1])
    return sorted(runs, key=lambda r: (r.started or 0.0, r.run_dir.name), reverse=True)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True
