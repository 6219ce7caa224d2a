"""Runs: past and running runs under the output root; Enter opens one's dashboard."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Header, Static

from ...errors import PefttoolError
from ...runfolder.summary import RunState, list_runs
from ...tasks import registered
from .. import formatting as fmt
from ..messages import RunsListed
from ..run_actions import has_checkpoint
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


SORTS = ("started", "status", "best", "name")
SORT_TEXT = {"started": "newest first", "status": "by status (running first)",
             "best": "by best metric", "name": "by name"}
STATUS_ORDER = ("running", "interrupted", "crashed", "failed", "unknown", "early_stopped", "completed")


def sort_runs(runs: list[RunState], by: str) -> list[RunState]:
    """`runs` as listed (newest first) in the order `by` names; ties keep the newest first."""
    if by == "status":
        return sorted(runs, key=lambda r: STATUS_ORDER.index(r.status) if r.status in STATUS_ORDER
                      else len(STATUS_ORDER))
    if by == "best":   # by metric name, then the better value first (as the run's task says)
        def best_key(run: RunState) -> tuple[int, str, float]:
            if run.best is None or not run.metric:
                return (1, "", 0.0)
            return (0, run.metric, -run.best if _higher_is_better(run) else run.best)
        return sorted(runs, key=best_key)
    if by == "name":
        return sorted(runs, key=lambda r: r.run_dir.name)
    return list(runs)


def _higher_is_better(run: RunState) -> bool:
    """The direction of the run's metric, from its task's metric table (True if unknown)."""
    task_type = (run.start.recipe.get("task") or {}).get("type") if run.start is not None else None
    try:
        return registered()[str(task_type)].higher_is_better(str(run.metric))
    except (PefttoolError, KeyError):
        return True


class RunTable(DataTable):
    """The run list; its Enter (select the row) is named in the footer as what it does."""

    BINDINGS = [Binding("enter", "select_cursor", "Open")]


class RunsScreen(AppScreen):
    """Every run directory under `runs_root`, newest first, refreshed every few seconds."""

    BINDINGS = [Binding("enter", "open", "Open", show=False),
                Binding("r", "resume", "Resume", tooltip="continue an interrupted run"),
                Binding("t", "try_it", "Try it", tooltip="type a text, the run's model answers"),
                Binding("d", "delete", "Delete", tooltip="delete a stopped run (asks first)"),
                Binding("o", "sort", "Sort", tooltip="sort by started, status, best or name"),
                Binding("f5", "reload", "Reload", show=False)]

    def __init__(self, runs_root: Path, shown_as: str = "") -> None:
        super().__init__()
        self.runs_root = runs_root
        self.shown_as = shown_as or str(runs_root)
        self.runs: list[RunState] = []
        self._cache: dict[Path, tuple[tuple[int, int], RunState]] = {}
        self.sort_by = SORTS[0]
        self.listed: list[RunState] = []   # as read (newest first), before sorting

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
        self.listed = message.runs
        self._show(message.error)

    def action_sort(self) -> None:
        self.sort_by = SORTS[(SORTS.index(self.sort_by) + 1) % len(SORTS)]
        self._show(None)

    def _show(self, error: str | None) -> None:
        table = self.query_one(DataTable)
        selected = self.current.path if self.current else None
        self.runs = sort_runs(self.listed, self.sort_by)
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
        header.set_class(error is not None, "problem")
        if error:
            header.update(error)
        elif not self.runs:
            header.update(f"no runs in {self.shown_as} yet: launch one from Recipes (1)")
        else:
            header.update(f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''} in "
                          f"{self.shown_as} · {SORT_TEXT[self.sort_by]} (o: sort)")

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
        if action == "resume":   # (stopped while loading: no checkpoint, nothing to resume)
            return run is not None and run.status in ("interrupted", "crashed") and has_checkpoint(run.path)
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
