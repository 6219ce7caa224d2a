"""Runs: past and running runs under the output root; Enter opens one's dashboard."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Header, Static

from ...runfolder.summary import RunState, list_runs
from .. import formatting as fmt
from ..messages import RunsListed
from ..widgets.footer import AppFooter
from .base import AppScreen

REFRESH_S = 2.0


# Short metric names, so the Runs table fits 80 columns.
SHORT_METRICS = {"accuracy": "acc", "macro_f1": "f1", "eval_loss": "loss", "perplexity": "ppl"}


def best_text(run: RunState) -> str:
    """The best evaluation during training; only a baseline is shown as "before"."""
    metric = SHORT_METRICS.get(run.metric or "", run.metric)
    if run.best is not None and metric:
        return f"{metric} {run.best:.4f}"
    if run.before is not None and metric:
        return f"before {metric} {run.before:.4f}"
    return "-"


class RunTable(DataTable):
    """The run list; its Enter (select the row) is named in the footer as what it does."""

    BINDINGS = [Binding("enter", "select_cursor", "Open")]


class RunsScreen(AppScreen):
    """Every run directory under `runs_root`, newest first, refreshed every few seconds."""

    BINDINGS = [Binding("enter", "open", "Open", show=False),
                Binding("r", "resume", "Resume", tooltip="continue an interrupted run"),
                Binding("t", "try_it", "Try it", tooltip="type a text, the run's model answers"),
                Binding("d", "delete", "Delete", tooltip="delete a stopped run (asks first)"),
                Binding("f5", "reload", "Reload", show=False)]

    def __init__(self, runs_root: Path, shown_as: str = "") -> None:
        super().__init__()
        self.runs_root = runs_root
        self.shown_as = shown_as or str(runs_root)
        self.runs: list[RunState] = []
        self._cache: dict[Path, tuple[tuple[int, int], RunState]] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="runs-root")
        yield RunTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield AppFooter()

    def on_mount(self) -> None:
        self.sub_title = "Runs"
        table = self.query_one(DataTable)
        table.add_columns("run", "status", "best", "step", "duration", "started")
        self.load_runs()
        self._refresh = self.set_interval(REFRESH_S, self.load_runs)

    def on_screen_suspend(self) -> None:
        self._refresh.pause()   # no rereading while another screen is shown

    def on_screen_resume(self) -> None:
        self._refresh.resume()
        self.load_runs()

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs",
          name="listing the runs")
    def load_runs(self) -> None:
        try:
            runs = list_runs(self.runs_root, self._cache)
        except OSError as exc:   # shown in place: a modal every refresh would trap the user
            self.post_message(RunsListed([], error=f"cannot read {self.shown_as}: {exc}"))
            return
        self.post_message(RunsListed(runs))

    def on_runs_listed(self, message: RunsListed) -> None:
        table = self.query_one(DataTable)
        selected = self.current.path if self.current else None
        self.runs = message.runs
        table.clear()
        for run in self.runs:
            step = f"{run.step}/{run.total_steps}" if run.total_steps else str(run.step)
            table.add_row(run.path.name, run.status.replace("_", " "), best_text(run), step,
                          fmt.duration(run.duration_s), fmt.timestamp(run.started),
                          key=str(run.path))
        for i, run in enumerate(self.runs):
            if run.path == selected:
                table.move_cursor(row=i)
        self.refresh_bindings()
        header = self.query_one("#runs-root", Static)
        header.set_class(message.error is not None, "problem")
        if message.error:
            header.update(message.error)
        elif not self.runs:
            header.update(f"no runs under {self.shown_as} yet: launch one from Recipes (1)")
        else:
            header.update(f"runs under {self.shown_as}")

    @property
    def current(self) -> RunState | None:
        if not self.runs:
            return None
        table = self.query_one(DataTable)
        return self.runs[min(table.cursor_row, len(self.runs) - 1)]

    @on(DataTable.RowSelected)
    def _selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        run = self.current
        if run is not None:
            self.pefttool_app.open_run(run.path)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        run = self.current if self.is_mounted else None
        if action == "resume":
            return run is not None and run.status in ("interrupted", "crashed")
        if action == "try_it":
            return run is not None and (run.path / "model").is_dir()
        if action == "delete":
            return run is not None and run.status != "running"
        return True

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self.refresh_bindings()

    def action_resume(self) -> None:
        if self.current is not None:
            self.pefttool_app.resume_run(self.current.path)

    def action_try_it(self) -> None:
        if self.current is not None:
            self.pefttool_app.try_run(self.current.path)

    def action_delete(self) -> None:
        if self.current is not None:
            self.pefttool_app.delete_run(self.current.path, done=self.load_runs)

    def action_reload(self) -> None:
        self.load_runs()
