"""Progress of a run: a bar, step/total, epoch and ETA; then learning rate, speed, memory."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Static

from .. import formatting as fmt
from ...runs import RunState


def progress_line(state: RunState) -> str:
    """`step 40/120 · epoch 1.33/3 · ETA 1m 05s` (or the run's end)."""
    total = state.total_steps
    parts = [f"step {state.step}/{total or '?'}"]
    last = state.last_step
    epochs = state.start.epochs if state.start else None
    if last is not None:
        parts.append(f"epoch {last.epoch:.2f}/{epochs or '?'}")
    elif epochs:
        parts.append(f"epoch 0/{epochs}")
    if state.end is not None:
        parts.append(f"{state.end.status.replace('_', ' ')} in {fmt.duration(state.end.duration_s)}")
    elif last is not None:
        parts.append(f"ETA {fmt.duration(last.eta_s)}")
        parts.append(f"elapsed {fmt.duration(last.elapsed_s)}")
    return " · ".join(parts)


def stats_line(state: RunState) -> str:
    last = state.last_step
    if last is None:
        return "lr - · tokens - · samples - · RSS - "
    parts = [f"loss {fmt.number(last.loss)}", f"lr {fmt.learning_rate(last.lr)}",
             f"tokens {fmt.rate(last.tokens_per_s)}", f"samples {fmt.rate(last.samples_per_s)}",
             f"RSS {fmt.megabytes(last.rss_mb)}"]
    if last.gpu_mem_mb is not None:
        parts.append(f"GPU {fmt.megabytes(last.gpu_mem_mb)}")
    return " · ".join(parts)


class RunProgress(Vertical):
    """The bar and two lines of figures; only the latest step event is ever rendered."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="progress-row"):
            # A known total from the start: an indeterminate bar animates (and costs CPU) forever
            # on a run that never reports one.
            yield ProgressBar(total=1, show_eta=False, id="progress-bar")
            yield Static("", id="progress-line", markup=False)
        yield Static("", id="stats-line", markup=False)

    def show_run(self, state: RunState) -> None:
        bar = self.query_one(ProgressBar)
        total = state.total_steps
        if total:
            done = total if state.end is not None and state.end.status == "completed" else state.step
            bar.update(total=total, progress=min(done, total))
        # Fixed one-line widgets: no layout pass on each update (these come several a second).
        self.query_one("#progress-line", Static).update(progress_line(state), layout=False)
        self.query_one("#stats-line", Static).update(stats_line(state), layout=False)
