"""`pefttool run` without a UI: progress people can read, on a terminal or in a log file.

On a terminal: one live line (progress bar, loss, speed, ETA) redrawn in place. Without one
(nohup, `ssh host cmd > log`, CI): a plain line every few seconds, no carriage returns.
Either way evaluations, checkpoints and messages get lines of their own, and the run ends
with a summary. The reporter is an observer plugin: it sees only the engine's events.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .events import CheckpointEvent, EndEvent, EvalEvent, LogEvent, PhaseEvent, StartEvent, StepEvent
from .hookspecs import hookimpl
from .runfolder.summary import format_duration, summarize

PLAIN_INTERVAL_ENV = "PEFTTOOL_PROGRESS_SECONDS"


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


class HeadlessReporter:
    """Prints a run's events. `live` = redraw one line in place (a terminal)."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, quiet: bool = False,
                 interval: float | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.quiet = quiet
        self.interval = interval if interval is not None else float(os.environ.get(PLAIN_INTERVAL_ENV, 5))
        self._last_plain = 0.0
        self._line_open = False
        self.start: StartEvent | None = None
        self.first_eval: EvalEvent | None = None
        self.earlier_s = 0.0          # a resumed run's time before this process

    # -- output that never kills the run (a closed SSH terminal makes writes fail)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _line(self, text: str) -> None:
        if self._line_open:
            self._write("\r\033[K")
            self._line_open = False
        self._write(text + "\n")

    # -- observer hooks

    @hookimpl
    def pefttool_run_start(self, event: StartEvent) -> None:
        self.start = event
        if event.resumed_from_step:   # the sessions before this one, from the run's own events
            self.earlier_s = summarize(Path(event.run_dir), keep_history=False).time_before(event)
        if self.quiet:
            return
        resumed = f", resumed at step {event.resumed_from_step}" if event.resumed_from_step else ""
        self._line(f"run {event.run_dir}")
        self._line(f"strategy {event.strategy}: {event.params_trainable:,} of {event.params_total:,} "
                   f"parameters train ({100 * event.params_trainable / max(event.params_total, 1):.2f} %), "
                   f"model {event.model_memory_mb:.1f} MiB on {event.device}"
                   + (f" × {event.processes} processes" if event.processes > 1 else ""))
        safety = event.safety
        if safety:
            self._line(f"safety: weights {safety.get('weights_format', '?')}, allow_pickle="
                       f"{str(safety.get('allow_pickle', False)).lower()}, trust_remote_code="
                       f"{str(safety.get('trust_remote_code', False)).lower()}")
        if event.total_steps < event.steps_per_epoch * event.epochs:  # train.max_steps cut the run
            plan = f"max_steps; {event.steps_per_epoch}/epoch"
        else:
            plan = f"{event.steps_per_epoch}/epoch × {event.epochs}"
        self._line(f"{event.total_steps} steps ({plan}){resumed}")

    @hookimpl
    def pefttool_step_end(self, event: StepEvent) -> None:
        if self.quiet:
            return
        text = (f"step {event.step}/{event.total_steps} epoch {event.epoch:.2f} loss {event.loss:.4f} "
                f"lr {event.lr:.2e} {event.tokens_per_s:,.0f} tok/s ETA {format_duration(event.eta_s)}")
        if self.live:
            frac = event.step / max(event.total_steps, 1)
            bar = "█" * int(frac * 24) + "░" * (24 - int(frac * 24))
            self._write(f"\r\033[K{bar} {100 * frac:3.0f}% {text}")
            self._line_open = True
        else:
            now = time.monotonic()
            if now - self._last_plain >= self.interval or event.step >= event.total_steps:
                self._last_plain = now
                self._line(f"{100 * event.step / max(event.total_steps, 1):3.0f}% {text}")

    @hookimpl
    def pefttool_eval_end(self, event: EvalEvent) -> None:
        if self.first_eval is None:
            self.first_eval = event
        if self.quiet:
            return
        mark = " (before training)" if event.before else " (best)" if event.is_best else ""
        self._line(f"eval at step {event.step}: {format_metrics(event.metrics)}{mark}")

    @hookimpl
    def pefttool_phase(self, event: PhaseEvent) -> None:
        # Only the live line shows phases ("evaluating 12/40"): a log file gets the results.
        if self.quiet or not self.live:
            return
        count = f" {event.done}/{event.total}" if event.total else ""
        self._write(f"\r\033[K{event.phase}{count} (step {event.step})")
        self._line_open = True

    @hookimpl
    def pefttool_checkpoint(self, event: CheckpointEvent) -> None:
        if not self.quiet and event.reason == "stop":
            self._line(f"checkpoint saved at step {event.step}: {event.path}")

    @hookimpl
    def pefttool_log(self, event: LogEvent) -> None:
        if not self.quiet or event.level != "info":
            self._line(f"{event.level}: {event.message}" if event.level != "info" else event.message)

    @hookimpl
    def pefttool_run_end(self, event: EndEvent) -> None:
        if event.status in ("failed",):
            return  # the CLI prints the error itself, once
        # A resumed run: this process's time, and the run's in all (as the TUI and `runs` say).
        whole = (f" ({format_duration(self.earlier_s + event.duration_s)} with the earlier sessions)"
                 if self.earlier_s else "")
        lines = [f"{event.status.replace('_', ' ')} after {event.step} steps in "
                 f"{format_duration(event.duration_s)}{whole}"]
        baseline = self.first_eval if self.first_eval is not None and self.first_eval.before else None
        if event.best is not None:
            before = f" (before training {baseline.value:.4f})" if baseline else ""
            lines.append(f"best {event.metric} {event.best:.4f} at step {event.best_step}{before}")
        elif baseline is not None:
            lines.append(f"before training {event.metric or baseline.metric} {baseline.value:.4f}; "
                         f"no evaluation after training yet")
        if event.model_dir:
            lines.append(f"model: {event.model_dir}")
        if event.message:
            lines.append(event.message)
        for line in lines:
            self._line(line)


def run_headless(recipe: Any, resume: bool = False, quiet: bool = False, run_dir: Path | None = None) -> int:
    """Run a recipe with the headless reporter; returns the process exit code."""
    from .engine import run_recipe
    from .plots import run_observers

    reporter = HeadlessReporter(quiet=quiet)
    # the reporter last: pluggy calls the latest registered first, so its summary comes before
    # the plot writer's lines
    result = run_recipe(recipe, resume=resume, run_dir=run_dir, observers=(*run_observers(), reporter))
    for error in result.plugin_errors:  # after the run's own outcome, never instead of it
        print(f"warning: {error}", file=sys.stderr)
    return result.exit_code


def resume_headless(run_dir: Path, quiet: bool = False, overrides: list[str] | None = None) -> int:
    """Continue the run in `run_dir` from its last checkpoint, with the recipe it ran with
    (and `overrides` of the keys a resume may change)."""
    from .runfolder.lifecycle import saved_recipe

    recipe = saved_recipe(run_dir, overrides)
    return run_headless(recipe, resume=True, quiet=quiet, run_dir=Path(run_dir).resolve())
