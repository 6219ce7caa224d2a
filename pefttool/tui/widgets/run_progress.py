"""Progress of a run: a bar, step/total, epoch and ETA; then learning rate, speed, memory."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Static

from ...runfolder.summary import RunState
from .. import formatting as fmt

PHASES = {"loading": "loading the model and data", "evaluating": "evaluating",
          "checkpointing": "saving a checkpoint", "saving": "saving the model"}


def phase_text(state: RunState) -> str:
    """What the run does between steps (`evaluating 3/10`), or '' while it trains."""
    phase = state.phase
    if phase is None or state.end is not None:
        return ""
    text = PHASES.get(phase.phase, phase.phase)
    if phase.total:
        text += f" {phase.done}/{phase.total}"
    return text


def progress_line(state: RunState) -> str:
    """`step 40/120 · epoch 1.33/3 · ETA 1m 05s` (or the run's end); the phase first when the
    run is not stepping (`evaluating 3/10 · step 40/120 …`). Durations cover the whole run,
    every resume included."""
    total = state.total_steps
    parts = [f"step {state.step}/{total or '?'}"]
    if phase_text(state):
        parts.insert(0, phase_text(state))
    last = state.last_step
    epochs = state.start.epochs if state.start else None
    if last is not None:
        parts.append(f"epoch {last.epoch:.2f}/{epochs or '?'}")
    elif epochs:
        parts.append(f"epoch 0/{epochs}")
    again = state.trained_again
    if again is not None:   # the resume went back to its checkpoint: say so, or it looks like a loss
        parts.append(f"resumed at step {again[0]} (its checkpoint): {again[0] + 1}–{again[1]} again")
    if state.end is not None:
        parts.append(f"{state.end.status.replace('_', ' ')} in {fmt.duration(state.duration_s)}")
    elif last is not None:
        if state.phase is None or state.phase.phase != "loading":   # (a resume's is stale)
            parts.append(f"ETA {fmt.duration(last.eta_s)}")
        parts.append(f"elapsed {fmt.duration(state.duration_s)}")
    return " · ".join(parts)


def stats_line(state: RunState) -> str:
    last = state.last_step
    if last is None:
        return "lr - · tokens - · samples - · RSS - "
    # Over: the whole run's mean speed (every resume); while training: the latest window.
    tokens = state.tokens_per_s if state.end is not None and state.tokens_per_s else last.tokens_per_s
    parts = [f"loss {fmt.number(last.loss)}", f"lr {fmt.learning_rate(last.lr)}",
             f"tokens {fmt.rate(tokens)}", f"samples {fmt.rate(last.samples_per_s)}",
             f"RSS {fmt.megabytes(last.rss_mb)}"]
    if last.gpu_mem_mb is not None:
        gpu = f"GPU {fmt.megabytes(last.gpu_mem_mb)}"
        if last.gpu_total_mb:
            gpu += f"/{fmt.megabytes(last.gpu_total_mb)}"
        if last.gpu_util is not None:
            gpu += f" {last.gpu_util:.0f}% busy"
        parts.append(gpu)
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
        # These lines wrap in a narrow terminal rather than lose their end; a layout pass (the
        # costly part of an update, which comes several times a second) only when the number
        # of lines they take changes.
        for wid, text in (("#progress-line", progress_line(state)), ("#stats-line", stats_line(state))):
            update_wrapped(self.query_one(wid, Static), text)


def update_wrapped(widget: Static, text: str) -> None:
    """Update a height:auto Static; relayout only when its wrapped line count changes."""
    width = max(1, widget.content_region.width or widget.size.width or 1)
    lines = -(-len(text) // width)
    layout = lines != getattr(widget, "_pefttool_lines", None)
    widget._pefttool_lines = lines   # type: ignore[attr-defined]
    widget.update(text, layout=layout)
