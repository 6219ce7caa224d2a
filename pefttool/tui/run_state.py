"""What the dashboard knows about one run, rebuilt from its events (no textual here).

Every event is kept (the loss curve wants all points); the widgets render only the latest
state, so a flood of step events costs one repaint per batch, not one per event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..events import CheckpointEvent, EndEvent, EvalEvent, Event, LogEvent, StartEvent, StepEvent


@dataclass
class RunState:
    """Everything read so far from one run's `events.jsonl`."""

    run_dir: Path
    start: StartEvent | None = None
    steps: list[StepEvent] = field(default_factory=list)
    evals: list[EvalEvent] = field(default_factory=list)
    logs: list[LogEvent] = field(default_factory=list)
    checkpoints: list[CheckpointEvent] = field(default_factory=list)
    end: EndEvent | None = None

    def apply(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, StepEvent):
                self.steps.append(event)
            elif isinstance(event, EvalEvent):
                self.evals.append(event)
            elif isinstance(event, LogEvent):
                self.logs.append(event)
            elif isinstance(event, CheckpointEvent):
                self.checkpoints.append(event)
            elif isinstance(event, StartEvent):
                self.start = event
            elif isinstance(event, EndEvent):
                self.end = event

    @property
    def name(self) -> str:
        if self.start is not None:
            return str(self.start.recipe.get("name") or self.run_dir.name)
        return self.run_dir.name

    @property
    def last_step(self) -> StepEvent | None:
        return self.steps[-1] if self.steps else None

    @property
    def step(self) -> int:
        if self.end is not None:
            return self.end.step
        return self.last_step.step if self.last_step else (self.start.resumed_from_step if self.start else 0)

    @property
    def total_steps(self) -> int:
        if self.last_step is not None:
            return self.last_step.total_steps
        return self.start.total_steps if self.start else 0

    @property
    def pid(self) -> int | None:
        return self.start.pid if self.start else None

    @property
    def metric(self) -> str | None:
        if self.evals:
            return self.evals[-1].metric
        return self.end.metric if self.end else None

    @property
    def best(self) -> float | None:
        if self.end is not None and self.end.best is not None:
            return self.end.best
        return self.evals[-1].best if self.evals else None
