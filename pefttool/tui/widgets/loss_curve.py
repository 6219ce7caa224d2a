"""The live loss curve: train loss per logged step, and the eval metric on its own axis."""

from __future__ import annotations

import time

from textual.timer import Timer
from textual_plotext import PlotextPlot

from ...runfolder.summary import RunState

MAX_POINTS = 600   # all points are kept in the RunState; a plot shows ~2 per column at most
# Building a plot costs tens of milliseconds, on the cores training needs: redraw at most
# this often while steps stream in (at once for a new evaluation or the run's end).
REPLOT_INTERVAL_S = 2.0


def thin(xs: list[float], ys: list[float], limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """Every k-th point (and always the last) so plotting cost stays flat on long runs."""
    if len(xs) <= limit:
        return xs, ys
    k = -(-len(xs) // limit)
    idx = list(range(0, len(xs), k))
    if idx[-1] != len(xs) - 1:
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


class LossCurve(PlotextPlot):
    """Train loss against step (left axis); the eval metric (right axis) once one arrives."""

    COMPONENT_CLASSES = {"loss-curve--train", "loss-curve--eval"}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._state: RunState | None = None
        self._plotted_at = 0.0
        self._plotted_evals = -1
        self._timer: Timer | None = None

    def show_run(self, state: RunState) -> None:
        self._state = state
        now = time.monotonic()
        urgent = state.end is not None or len(state.evals) != self._plotted_evals
        if urgent or now - self._plotted_at >= REPLOT_INTERVAL_S:
            self._flush()
        elif self._timer is None:
            self._timer = self.set_timer(REPLOT_INTERVAL_S - (now - self._plotted_at), self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._plotted_at = time.monotonic()
        self._plotted_evals = len(self._state.evals) if self._state else -1
        self._replot()
        self.refresh()

    def on_mount(self) -> None:
        super().on_mount()
        self._replot()

    def _color(self, component: str) -> tuple[int, int, int] | None:
        color = self.get_component_rich_style(component).color
        if color is None:
            return None
        triplet = color.get_truecolor()
        return (triplet.red, triplet.green, triplet.blue)

    def _replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.title("")
        plt.xlabel("step")
        # plotext's ylabel takes `yside`; textual-plotext's stub spells it `xside` (a stub typo)
        plt.ylabel("train loss", yside="left")  # type: ignore[call-arg]
        state = self._state
        if state is None or not state.steps:
            plt.ylabel("", yside="right")  # type: ignore[call-arg]
            plt.xlim(0, max(1, state.total_steps if state else 1))
            plt.ylim(0, 1)
            return
        # Two points per column is all braille can show; more only slows plotext down.
        limit = min(MAX_POINTS, max(100, 2 * self.size.width))
        xs, ys = thin([s.step for s in state.steps], [s.loss for s in state.steps], limit)
        plt.plot(xs, ys, label="train loss", color=self._color("loss-curve--train"),
                 marker="braille")
        if state.evals:
            metric = state.evals[-1].metric
            plt.plot([e.step for e in state.evals], [e.value for e in state.evals],
                     yside="right", label=metric, color=self._color("loss-curve--eval"),
                     marker="dot" if len(state.evals) > 1 else "hd")
            plt.ylabel(metric, yside="right")  # type: ignore[call-arg]
        else:
            plt.ylabel("", yside="right")  # type: ignore[call-arg]
        right = max(state.total_steps, xs[-1], 1)
        plt.xlim(0, right)
        ticks: list[float] = sorted({round(right * i / 4) for i in range(5)})   # whole steps, not 93.8
        plt.xticks(ticks, [str(t) for t in ticks])
        plt.ylim(None, None)
