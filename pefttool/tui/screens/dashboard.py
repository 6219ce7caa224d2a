"""The run dashboard: progress, live loss curve, speed and memory, evals, log; Stop.

The same screen shows a run launched from the UI, a run attached to (started headless
earlier), and a finished run (read-only). A thread worker tails `events.jsonl` (and the
child's stderr.log); events are queued and at most one `RunEventsPending` message is in
flight, so however fast a run logs, the UI repaints once per batch with the latest state
while the curve keeps every point.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Header, Static
from textual.worker import get_current_worker

from ...events import EVENTS_FILE, EndEvent, Event, EventFollower, LineTail, PhaseEvent, StartEvent
from ...runfolder.summary import RunState, pid_alive
from .. import formatting as fmt
from ..child import INTERRUPTED_CODES, TrainingChild, describe_exit, find_stderr, tail
from ..messages import RunEventsPending, RunProcessEnded
from ..run_actions import has_checkpoint
from ..widgets.error_panel import ErrorPanel
from ..widgets.eval_table import EvalTable
from ..widgets.footer import AppFooter
from ..widgets.log_pane import LogPane
from ..widgets.loss_curve import LossCurve
from ..widgets.run_progress import RunProgress, update_wrapped
from .base import AppScreen

# When the engine has written its end event, its process may take a moment to exit.
EXIT_GRACE_S = 10.0
# The title's CSS class per status (its colour is in app.tcss).
STATUS_CLASSES = {"running": "-running", "completed": "-completed", "early stopped": "-completed",
                  "failed": "-failed", "crashed": "-failed", "interrupted": "-interrupted",
                  "stopping": "-interrupted"}


class StderrFollower:
    """New complete lines of a growing stderr.log (progress-bar redraws collapsed).

    `path` may be pointed at the file's new place when it moves (the child's stderr moves into
    the run folder once the run starts): reading carries on where it was, in the moved file.
    """

    def __init__(self, path: Path):
        self._tail = LineTail(path, chunk=256_000)

    @property
    def path(self) -> Path:
        return self._tail.path

    @path.setter
    def path(self, value: Path) -> None:
        self._tail.path = Path(value)

    def poll(self) -> list[str]:
        out = []
        for raw in self._tail.poll():
            text = raw.decode("utf-8", errors="replace").rsplit("\r", 1)[-1].rstrip()
            if text:
                out.append(text)
        return out


class DashboardScreen(AppScreen):
    """One run, live or finished."""

    BINDINGS = [
        Binding("s", "stop", "Stop run"),
        Binding("r", "resume", "Resume", tooltip="continue the run from its last checkpoint"),
        Binding("t", "try_it", "Try it", tooltip="type a text, the run's model answers"),
        Binding("i", "info", "Paths", tooltip="the run's folder and the commands that rerun, "
                                              "continue, plot or export it (copied)"),
        Binding("p", "plot", "Plot", tooltip="write the run's curves as a PNG and say where"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, run_dir: Path, child: TrainingChild | None = None,
                 poll_interval: float = 0.5) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.child = child
        self.poll_interval = poll_interval
        self.state = RunState(self.run_dir)
        self.process_ended = False
        self.stop_sent = False
        self._lock = threading.Lock()
        self._pending_events: list[Event] = []
        self._pending_stderr: list[str] = []
        self._notified = False
        self._shown_status = ""

    def compose(self) -> ComposeResult:
        yield Header()
        # Fills the screen; in a narrow terminal the panels stack and this scrolls (app.tcss).
        with VerticalScroll(id="run-body", can_focus=False):
            yield Static("", id="run-title", markup=False)
            yield RunProgress(id="run-progress")
            yield ErrorPanel(id="error-panel")
            with Horizontal(id="run-middle"):
                yield LossCurve(id="loss-curve")
                yield EvalTable(id="eval-table")
            yield LogPane(id="log-pane")
        yield AppFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Run {self.run_dir.name}"
        self.query_one(ErrorPanel).display = False
        self.query_one("#error-panel").border_title = "training stopped"
        self.query_one(EvalTable).border_title = "evaluations"
        self.query_one(LogPane).border_title = "log"
        self._render_state()
        if self.child is not None:
            self.query_one(LogPane).add_line(
                "started: " + " ".join(self.child.command[1:]), "note")
        self._events_file = EventFollower(self.run_dir / EVENTS_FILE)
        self._stderr_file = StderrFollower(self.child.stderr_file if self.child
                                           else find_stderr(self.run_dir))
        self.follow_run()
        if self.child is None:
            self.set_interval(max(self.poll_interval, 1.0), self._watch_for_resume)

    # ------------------------------------------------------------------ following

    @property
    def live(self) -> bool:
        """Whether the run can still change (and be stopped)."""
        return not self.process_ended and self.state.end is None

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else self.state.pid

    def _queue(self, events: list[Event], lines: list[str]) -> None:
        if not events and not lines:
            return
        with self._lock:
            self._pending_events.extend(events)
            self._pending_stderr.extend(lines)
            if self._notified:
                return
            self._notified = True
        self.post_message(RunEventsPending())

    @work(thread=True, exclusive=True, exit_on_error=False, group="follow",
          name="following the run")
    def follow_run(self) -> None:
        """Tail the run while it can change. Once it has ended (or its process is gone) the
        worker stops, and `_watch_for_resume` restarts it if the run's events.jsonl grows:
        `pefttool resume` appends a new start to it, and the run continues here."""
        worker = get_current_worker()
        events_file, stderr_file = self._events_file, self._stderr_file
        pid = None
        ended_at = None
        while not worker.is_cancelled:
            events = events_file.poll()
            self._queue(events, stderr_file.poll())
            for event in events:
                if isinstance(event, StartEvent) or (isinstance(event, PhaseEvent)
                                                    and event.phase == "loading"):
                    pid, ended_at = event.pid, None
                elif isinstance(event, EndEvent):
                    ended_at = time.monotonic()
            if self.child is not None:
                self.child.adopt_files()
                stderr_file.path = self.child.stderr_file
                code = self.child.poll()
                if code is not None:
                    self._queue(events_file.poll(), stderr_file.poll())
                    self.post_message(RunProcessEnded(code, self.child.stderr_tail()))
                    return
                if ended_at is not None and time.monotonic() - ended_at > EXIT_GRACE_S:
                    return   # it ended its run but lingers; nothing more will be written
            elif ended_at is not None:
                return
            elif pid is not None and not pid_alive(pid):
                last = events_file.poll()
                self._queue(last, stderr_file.poll())
                if not any(isinstance(e, EndEvent) for e in last):
                    self.post_message(RunProcessEnded(None, tail(find_stderr(self.run_dir))))
                return
            time.sleep(self.poll_interval)

    def _watch_for_resume(self) -> None:
        """An ended attached run is followed again as soon as its events.jsonl grows."""
        if self.child is not None or any(w.group == "follow" and not w.is_finished
                                         for w in self.workers):
            return
        try:
            size = (self.run_dir / EVENTS_FILE).stat().st_size
        except OSError:
            return
        if size > self._events_file.offset:
            self._stderr_file.path = find_stderr(self.run_dir)
            self.follow_run()

    def on_run_events_pending(self, message: RunEventsPending) -> None:
        with self._lock:
            events, self._pending_events = self._pending_events, []
            lines, self._pending_stderr = self._pending_stderr, []
            self._notified = False
        log = self.query_one(LogPane)
        log.show_events(events)
        for line in lines:
            log.add_line(line, "stderr")
        if not events:
            return
        if any(isinstance(e, StartEvent) or (isinstance(e, PhaseEvent) and e.phase == "loading")
               for e in events) and (self.state.end is not None or self.process_ended):
            # a new process took the run up (`pefttool resume`): it is live again
            self.process_ended = self.stop_sent = False
            panel = self.query_one(ErrorPanel)
            if panel.has_focus_within:
                # else hiding it hands focus to the log, and a narrow screen scrolls down to
                # it: the status and progress of the resumed run would be out of view
                self.set_focus(None, scroll_visible=False)
            panel.display = False
            log.add_line("the run continues (resumed)", "note")
        self.state.apply(events)
        if self.state.start is not None and self.live:
            self.pefttool_app.note_live_run(self.run_dir, self.pid)
        if self.state.end is not None:
            self.pefttool_app.note_live_run(self.run_dir, None)
        self._render_state()

    def on_run_process_ended(self, message: RunProcessEnded) -> None:
        self.process_ended = True
        self.pefttool_app.note_live_run(self.run_dir, None)
        code = message.returncode
        end = self.state.end
        log = self.query_one(LogPane)
        if code is not None:
            log.add_line(f"process exited with status {code}: "
                         f"{describe_exit(code, has_checkpoint(self.run_dir))}", "note")
        if code is None:
            failed = end is None                          # an attached run's process vanished
        else:
            failed = code != 0 and code not in INTERRUPTED_CODES
        if failed or (end is not None and end.status == "failed"):
            if end is not None and end.message:
                summary = f"The run failed at step {end.step}: {end.message}"
            elif code is None:
                summary = (f"The run's process (pid {self.state.pid}) is gone without finishing: "
                           f"it crashed or was killed.")
            else:
                summary = f"Training stopped: exit status {code}, {describe_exit(code)}."
            where = self.child.stderr_file if self.child else find_stderr(self.run_dir)
            summary += f"\nLast lines of {fmt.display_path(where, self.pefttool_app.cwd)}:"
            self.query_one(ErrorPanel).show_error(summary, message.stderr_tail)
        self._render_state()

    # ------------------------------------------------------------------ rendering

    def _status(self) -> str:
        if self.state.end is not None:
            return self.state.end.status.replace("_", " ")
        if self.process_ended:
            return "crashed"
        if self.stop_sent:
            return "stopping"
        if self.state.start is None:
            return "starting" if self.child is not None else "waiting for events"
        return "running"

    def _render_state(self) -> None:
        state = self.state
        title = self.query_one("#run-title", Static)
        parts = [state.name]
        if state.best is not None:
            parts.append(f"best {state.metric} {state.best:.4f}")
        if state.start is not None:
            s = state.start
            device = f"{s.device} ×{s.processes}" if getattr(s, "processes", 1) > 1 else s.device
            parts += [s.strategy, device,
                      f"{fmt.count(s.params_trainable)}/{fmt.count(s.params_total)} params trained",
                      f"model {fmt.megabytes(s.model_memory_mb)}"]
        if state.segments > 1:
            parts.append(f"resumed ×{state.segments - 1}")
        status = self._status()
        update_wrapped(title, f"{status.upper()}  " + " · ".join(parts))
        if status != self._shown_status:
            # Restyling and rebuilding the footer cost more than the rest of a repaint, so
            # they happen when the status changes, not on every batch of events.
            self._shown_status = status
            title.remove_class(*set(STATUS_CLASSES.values()))
            if status in STATUS_CLASSES:
                title.add_class(STATUS_CLASSES[status])
            self.refresh_bindings()
        self.query_one(RunProgress).show_run(state)
        self.query_one(LossCurve).show_run(state)
        self.query_one(EvalTable).show_run(state)

    # ------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.live and self.pid is not None and not self.stop_sent
        if action == "resume":   # (stopped while loading: no checkpoint, nothing to resume)
            return not self.live and self._status() in ("interrupted", "crashed") \
                and has_checkpoint(self.run_dir)
        if action == "try_it":
            return not self.live and (self.run_dir / "model").is_dir()
        return True

    def action_info(self) -> None:
        """The run's folder and commands in a dialog; the commands go to the clipboard too
        (OSC 52: most terminals take it, over SSH as well)."""
        from ..run_actions import run_commands
        from .modals import ErrorModal

        lines = run_commands(self.run_dir)
        text = "\n".join(f"{what}:\n  {command}" for what, command in lines)
        self.app.copy_to_clipboard("\n".join(command for _, command in lines[1:]))
        self.app.push_screen(ErrorModal(f"{self.run_dir.name}: paths and commands (copied)", text))

    def action_plot(self) -> None:
        self.notify("drawing the curves…", title="Plot")
        self.write_plot()

    @work(thread=True, exclusive=True, exit_on_error=False, group="plot", name="plotting the run")
    def write_plot(self) -> None:
        from ...errors import PefttoolError
        from ...plots import plot_runs
        from ...runfolder.rundir import RunDir

        try:
            out = plot_runs([self.run_dir], RunDir(self.run_dir).plot)
        except PefttoolError as exc:
            self.app.call_from_thread(self.notify, str(exc), title="No plot", severity="error")
            return
        self.app.call_from_thread(self.notify, str(out), title="Plot written")

    def action_resume(self) -> None:
        if self.check_action("resume", ()):
            self.pefttool_app.resume_run(self.run_dir)

    def action_try_it(self) -> None:
        if self.check_action("try_it", ()):
            self.pefttool_app.try_run(self.run_dir)

    def action_stop(self) -> None:
        from .modals import ConfirmModal

        if not self.live or self.pid is None:
            return
        self.app.push_screen(
            ConfirmModal(f"Stop {self.state.name}? It saves a checkpoint, then stops; "
                         f"`pefttool resume` continues it later.", yes="Stop", no="Keep going"),
            self._confirmed_stop)

    def _confirmed_stop(self, yes: bool | None) -> None:
        if not yes or not self.live:
            return
        try:
            if self.child is not None:
                self.child.stop()
            elif self.pid is not None:
                os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            self.query_one(LogPane).add_line("the run's process is already gone", "warning")
            return
        self.stop_sent = True
        self.query_one(LogPane).add_line("stop requested (SIGINT): checkpointing, then stopping",
                                         "note")
        self.refresh_bindings()
        self._render_state()

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        else:
            self.app.switch_mode("runs")
