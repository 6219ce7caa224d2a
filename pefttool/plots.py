"""Curves of runs as pictures, for people who read results over SSH, and for TensorBoard.

    plot_runs([run_dir, ...], out_png)   train loss (and eval loss), learning rate and the ruling
                                         eval metric, one line per run (legend: the run's name)
    PlotWriter()                         an observer: writes RUN_DIR/plots.png when a run ends
    TensorBoardWriter()                  an observer: TensorBoard event files in RUN_DIR/tensorboard/
                                         while a run trains, when tensorboard is installed

Both observers only read events (the engine knows nothing of them); the PNG is drawn from
events.jsonl, so `pefttool plot` and the end-of-run picture are the same. matplotlib is used
without pyplot (Agg canvas: no display, no global state). It is optional at run time: when it
is missing, the run ends as it would have, with one line saying the picture was skipped.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import OutputError
from .hookspecs import hookimpl
from .runfolder.rundir import EVENTS_FILE, PLOT_FILE, TENSORBOARD_DIR, write_failure

Points = list[tuple[int, float]]


class MatplotlibMissing(OutputError):
    """Drawing needs matplotlib, which is not installed."""


@dataclass
class RunCurves:
    """One run's curves, by optimizer step (a resumed run's repeated steps: the latest wins)."""

    name: str
    loss: Points = field(default_factory=list)
    lr: Points = field(default_factory=list)
    metric: str | None = None
    evals: dict[str, Points] = field(default_factory=dict)   # every eval metric, baseline at step 0
    bad_lines: int = 0     # lines of events.jsonl that were not events (skipped)


def _by_step(points: dict[int, float]) -> Points:
    return sorted(points.items())


def read_curves(run_dir: Path) -> RunCurves:
    """A run's curves from its events.jsonl (lines that are not events are skipped)."""
    from .runfolder.summary import is_run_dir, summarize

    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise OutputError(f"{run_dir} is not a pefttool run (no events.jsonl); pass a folder that "
                          f"pefttool run printed (pefttool runs lists them)")
    state = summarize(run_dir, keep_history=True)
    if state.bad_lines and state.start is None and not state.steps and not state.evals:
        raise OutputError(f"{run_dir / EVENTS_FILE} is damaged: none of its {state.bad_lines} "
                          f"line(s) is an event, so there is nothing to plot; plot another run")
    loss: dict[int, float] = {}
    lr: dict[int, float] = {}
    for step in state.steps:
        loss[int(step.step)] = float(step.loss)
        lr[int(step.step)] = float(step.lr)
    evals: dict[str, dict[int, float]] = {}
    for ev in state.evals:
        for name, value in ev.metrics.items():
            if isinstance(value, (int, float)):
                evals.setdefault(name, {})[int(ev.step)] = float(value)
    return RunCurves(name=state.name, loss=_by_step(loss), lr=_by_step(lr), metric=state.metric,
                     evals={k: _by_step(v) for k, v in evals.items()}, bad_lines=state.bad_lines)


def plot_runs(run_dirs: list[Path], out: Path, warn: Callable[[str], None] | None = None) -> Path:
    """One PNG with three panels (loss, learning rate, eval metric), every run on each.
    Written to a temporary file, then renamed: never a half-written picture. `warn` hears of a
    partly damaged events.jsonl (drawn from the lines that are events)."""
    curves = [read_curves(d) for d in run_dirs]
    for run_dir, c in zip(run_dirs, curves):
        if c.bad_lines and warn is not None:
            warn(f"warning: {run_dir}: {c.bad_lines} line(s) of events.jsonl are not events and "
                 f"were skipped")
    if not any(c.loss or c.lr or c.evals for c in curves):
        # a blank picture would look like a plot of a run that learned nothing
        which = run_dirs[0] if len(run_dirs) == 1 else "these runs"
        raise OutputError(f"{which}: no steps or evaluations logged yet, so there is nothing to "
                          f"plot; plot it again after its first steps")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MatplotlibMissing("plotting needs matplotlib, which is not installed: "
                                "pip install matplotlib") from None
    names = _unique_names([c.name for c in curves], run_dirs)
    fig = Figure(figsize=(15, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, lr_ax, eval_ax = fig.subplots(1, 3)
    metrics = sorted({c.metric for c in curves if c.metric})
    for i, (c, name) in enumerate(zip(curves, names)):
        color = f"C{i % 10}"
        if c.loss:
            loss_ax.plot(*zip(*c.loss), color=color, label=f"{name} train")
        if c.evals.get("eval_loss"):
            loss_ax.plot(*zip(*c.evals["eval_loss"]), color=color, linestyle="--", marker="o",
                         markersize=3, label=f"{name} eval")
        if c.lr:
            lr_ax.plot(*zip(*c.lr), color=color, label=name)
        if c.metric and c.evals.get(c.metric):
            label = name if len(metrics) == 1 else f"{name} ({c.metric})"
            eval_ax.plot(*zip(*c.evals[c.metric]), color=color, marker="o", markersize=3, label=label)
    loss_ax.set_title("loss (train; eval dashed)")
    lr_ax.set_title("learning rate")
    eval_ax.set_title(f"eval {', '.join(metrics)}" if metrics else "eval (no evaluations yet)")
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, lr_ax, eval_ax):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    tmp.unlink(missing_ok=True)  # a link there is removed, not written through
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    except Exception as exc:
        reason = write_failure(exc)
        if reason:  # a full disk, a file-size limit, a read-only folder
            raise OutputError(f"--out: cannot write {out} ({reason}); free space or choose another "
                              f"folder") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _unique_names(names: list[str], run_dirs: list[Path]) -> list[str]:
    """Runs of the same recipe share a name: tell them apart by their folder."""
    if len(set(names)) == len(names):
        return list(names)
    parts = [Path(p).resolve().parts for p in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        tails = ["/".join(p[-depth:]) for p in parts]
        if len(set(tails)) == len(tails):
            return [name if names.count(name) == 1 else f"{name} ({tail})"
                    for name, tail in zip(names, tails)]
    return [str(p) for p in run_dirs]  # the same folder twice


class PlotWriter:
    """Observer: draws RUN_DIR/plots.png when a run ends (also when it stopped early or was
    interrupted: the curves so far). Never fails the run: a problem is one line on stderr."""

    def __init__(self, stream: Any = None):
        self.stream = stream
        self.run_dir: Path | None = None
        self.steps = 0

    def _say(self, text: str) -> None:
        try:
            print(text, file=self.stream or sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    @hookimpl
    def pefttool_run_start(self, event: Any) -> None:
        self.run_dir = Path(event.run_dir)

    @hookimpl
    def pefttool_step_end(self, event: Any) -> None:
        self.steps += 1

    @hookimpl
    def pefttool_run_end(self, event: Any) -> None:
        if self.run_dir is None or not self.steps:
            return   # nothing trained in this process (a failure at set-up): no curves to draw
        try:
            plot_runs([self.run_dir], self.run_dir / PLOT_FILE)
        except MatplotlibMissing:
            self._say(f"note: {PLOT_FILE} skipped: matplotlib is not installed (pip install matplotlib)")
        except Exception as exc:  # a picture is never worth a failed run
            self._say(f"warning: {PLOT_FILE} not written ({type(exc).__name__}: {exc})")


def tensorboard_writer_class() -> Any:
    """torch's SummaryWriter when tensorboard is installed (else tensorboardX's), or None."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter
        except ImportError:
            pass
    if importlib.util.find_spec("tensorboardX") is not None:
        try:
            from tensorboardX import SummaryWriter as TensorboardXWriter

            return TensorboardXWriter
        except ImportError:
            pass
    return None


class TensorBoardWriter:
    """Observer: TensorBoard scalars (train/loss, train/lr, train/tokens_per_s, eval/<metric>)
    in RUN_DIR/tensorboard/, written as the run goes, so `tensorboard --logdir runs` shows every
    run. Does nothing when no TensorBoard writer is installed (`pip install pefttool[tensorboard]`)."""

    def __init__(self, writer_class: Any = None, stream: Any = None):
        self.writer_class = writer_class
        self.stream = stream
        self.writer: Any = None

    def _guarded(self, write: Any) -> None:
        """A failing writer (a full disk) stops TensorBoard output, never the run."""
        if self.writer is None:
            return
        try:
            write(self.writer)
        except Exception as exc:
            self._stopped(exc)

    def _stopped(self, exc: Exception) -> None:
        self.writer = None
        try:
            print(f"warning: TensorBoard output stopped ({type(exc).__name__}: {exc})",
                  file=self.stream or sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    @hookimpl
    def pefttool_run_start(self, event: Any) -> None:
        cls = self.writer_class or tensorboard_writer_class()
        if cls is None:
            return
        try:
            self.writer = cls(log_dir=str(Path(event.run_dir) / TENSORBOARD_DIR))
        except Exception as exc:
            self._stopped(exc)

    @hookimpl
    def pefttool_step_end(self, event: Any) -> None:
        def write(w: Any) -> None:
            w.add_scalar("train/loss", event.loss, event.step)
            w.add_scalar("train/lr", event.lr, event.step)
            w.add_scalar("train/tokens_per_s", event.tokens_per_s, event.step)
        self._guarded(write)

    @hookimpl
    def pefttool_eval_end(self, event: Any) -> None:
        def write(w: Any) -> None:
            for name, value in event.metrics.items():
                if isinstance(value, (int, float)):
                    w.add_scalar(f"eval/{name}", value, event.step)
            w.flush()
        self._guarded(write)

    @hookimpl
    def pefttool_run_end(self, event: Any) -> None:
        self._guarded(lambda w: w.close())
        self.writer = None


def run_observers() -> tuple[Any, ...]:
    """The observers every headless (and TUI-launched) run gets besides its reporter."""
    return (PlotWriter(), TensorBoardWriter())
