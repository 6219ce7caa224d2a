"""The pefttool terminal UI: `make_app()` builds it for the CLI and for the tests.

Modes (switch with 1, 2, 3): Recipes (pick, adjust, launch), Runs (past and running runs),
Plugins. A launched run trains in a child process and opens on a dashboard; the app only
reads the run's `events.jsonl`, so a crash in training never takes the UI down.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual.app import SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen, Screen

from ..runfolder.summary import pid_alive
from .child import TrainingChild, default_command, new_run_dir, staged_path
from .formatting import display_path
from .keys import InOrderKeysApp
from .screens.modals import ConfirmModal, ErrorModal, QuitModal
from .screens.plugins import PluginsScreen
from .screens.recipes import RecipesScreen
from .screens.runs import RunsScreen


def _declared_by_pefttool(node: Any, action: str) -> bool:
    """Whether a class of pefttool's own (not Textual's) binds `action` on this node."""
    for cls in type(node).__mro__:
        if cls.__module__.startswith("pefttool.") and any(
                (b.action if isinstance(b, Binding) else b[1]) == action
                for b in cls.__dict__.get("BINDINGS", ())):
            return True
    return False


class PefttoolApp(InOrderKeysApp):
    """Recipes → adjust → launch → dashboard; runs and plugins alongside."""

    CSS_PATH = "app.tcss"
    DEFAULT_MODE = "recipes"
    TITLE = "pefttool"
    # Below 76 columns the screens stack their panels (app.tcss, `.-narrow` rules).
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (76, "-wide")]
    BINDINGS = [
        Binding("1", "show('recipes')", "Recipes", tooltip="the recipe list"),
        Binding("2", "show('runs')", "Runs", tooltip="the run list"),
        Binding("3", "show('plugins')", "Plugins", tooltip="installed plugins"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        runs_root: Path = Path("runs"),
        cwd: Path | None = None,
        attach: Path | None = None,
        run_command: list[str] | None = None,
        poll_interval: float = 0.5,
        estimate_plans: bool = True,
    ) -> None:
        super().__init__()
        self.estimate_plans = estimate_plans
        self.cwd = Path.cwd() if cwd is None else Path(cwd)
        root = Path(runs_root).expanduser()
        self.runs_root = root if root.is_absolute() else self.cwd / root
        self.attach = attach
        self.run_command = run_command or default_command()
        self.poll_interval = poll_interval
        self.training: list[TrainingChild] = []
        self.live_runs: dict[Path, int] = {}   # attached runs seen alive: run dir → pid
        self.add_mode("recipes", lambda: RecipesScreen(self.cwd))
        self.add_mode("runs", lambda: RunsScreen(self.runs_root, display_path(self.runs_root, self.cwd)))
        self.add_mode("plugins", PluginsScreen)

    def on_mount(self) -> None:
        self.set_interval(0.5, self._adopt_files)
        if self.attach is not None:
            self.open_run(Path(self.attach))

    async def action_show(self, mode: str) -> None:
        """1/2/3: the mode's own list (Recipes, Runs, Plugins), not a screen left open on it."""
        if self.current_mode != mode:
            await self.switch_mode(mode)
        while len(self.screen_stack) > 1 and not isinstance(self.screen, ModalScreen):
            await self.pop_screen()

    # ------------------------------------------------------------------ runs

    def confirm_launch(self, what: str, start: Callable[[], object]) -> None:
        """Launching starts training (minutes to hours of compute): ask first."""
        def answer(yes: bool | None) -> None:
            if yes:
                start()

        self.push_screen(ConfirmModal(f"Launch {what}?", yes="Launch", no="Cancel",
                                      yes_variant="primary"), answer)

    def resume_run(self, run_dir: Path) -> TrainingChild | None:
        """`pefttool resume RUN_DIR` in a child process; its dashboard follows it."""
        from .run_actions import RunActionError, can_resume
        from .screens.dashboard import DashboardScreen

        run_dir = Path(run_dir).resolve()
        if run_dir in {p.resolve() for p in self.running()}:
            # one resume at a time: a second would be refused by the run's lock and its exit
            # (bad input) would stand in for the run's status on the dashboard
            self.notify(f"{run_dir.name} is already running: its dashboard follows it", title="Resume")
            return None
        try:
            if not can_resume(run_dir):
                raise RunActionError(f"{run_dir.name} is not an interrupted run")
            child = TrainingChild.resume(run_dir, self.run_command, cwd=self.cwd)
        except (OSError, RunActionError) as exc:
            self.show_error("Could not resume the run", str(exc))
            return None
        self.training.append(child)
        if isinstance(self.screen, DashboardScreen) and self.screen.run_dir.resolve() == run_dir:
            self.pop_screen()   # its replacement follows the new process from the start
        self.push_screen(DashboardScreen(run_dir, child, poll_interval=self.poll_interval))
        return child

    def delete_run(self, run_dir: Path, done: Callable[[], object] | None = None) -> None:
        """Delete a stopped pefttool run after a confirm (never a folder pefttool did not write)."""
        from .run_actions import RunActionError, check_deletable, delete_run

        def answer(yes: bool | None) -> None:
            if not yes:
                return
            try:
                kept = delete_run(run_dir)
            except (OSError, RunActionError) as exc:
                self.show_error("Not deleted", str(exc))
                return
            if kept:
                self.notify(f"kept {run_dir.name}/ for files pefttool did not write: "
                            f"{', '.join(kept[:5])}", title="Run files deleted")
            else:
                self.notify(f"deleted {run_dir.name}", title="Run deleted")
            if done is not None:
                done()

        if run_dir.resolve() in {p.resolve() for p in self.running()}:
            self.show_error("Not deleted", f"{run_dir.name} is still running: stop it first")
            return
        try:
            check_deletable(run_dir)   # a folder pefttool did not write is refused before asking
        except (OSError, RunActionError) as exc:
            self.show_error("Not deleted", str(exc))
            return
        self.push_screen(ConfirmModal(f"Delete the run {run_dir.name}? Its model, checkpoints "
                                      f"and logs are removed; files pefttool did not write "
                                      f"are kept.", yes="Delete", no="Keep"), answer)


    def launch(self, recipe_path: Path | None, overrides: list[str], name: str,
               adjusted: tuple[dict[str, Any], str | None, Path] | None = None) -> TrainingChild | None:
        """Start `pefttool run` in a child process and open its dashboard.

        `adjusted` (data, original text, original path) is written into the run folder and
        launched instead of `recipe_path`, for edits that `--set` cannot express.
        """
        from .recipe_edit import absolutize_paths, recipe_text, write_new_file
        from .screens.dashboard import DashboardScreen

        try:
            run_dir = new_run_dir(self.runs_root, name)
            if adjusted is not None:
                data, text, source = adjusted
                recipe_path = staged_path(run_dir, ".recipe.toml")
                data = absolutize_paths(data, source.parent, run_dir.parent)
                write_new_file(recipe_path, recipe_text(data, text, str(source)))
            assert recipe_path is not None
            child = TrainingChild.start(recipe_path, run_dir, overrides, command=self.run_command,
                                        cwd=self.cwd)
        except OSError as exc:
            self.show_error("Could not start training", f"{exc}")
            return None
        self.training.append(child)
        self.push_screen(DashboardScreen(run_dir, child, poll_interval=self.poll_interval))
        return child

    def _adopt_files(self) -> None:
        for child in self.training:
            if child.staged:
                child.adopt_files()

    def open_run(self, run_dir: Path) -> None:
        """The dashboard of a run: live if it is still going, read-only otherwise."""
        from .screens.dashboard import DashboardScreen

        run_dir = Path(run_dir).resolve()
        if not run_dir.is_dir():
            self.show_error("No such run", f"{run_dir} is not a directory")
            return
        child = next((c for c in self.training if c.run_dir.resolve() == run_dir), None)
        self.push_screen(DashboardScreen(run_dir, child, poll_interval=self.poll_interval))

    def try_run(self, run_dir: Path) -> None:
        """The Try it screen of a finished run (its model answers typed texts)."""
        from .screens.try_it import TryScreen

        if not (Path(run_dir) / "model").is_dir():
            self.show_error("Nothing to try yet", f"{Path(run_dir).name} has no model/ yet: it "
                            f"saves one at its first evaluation after training")
            return
        self.push_screen(TryScreen(Path(run_dir)))

    def note_live_run(self, run_dir: Path, pid: int | None) -> None:
        """Dashboards report runs they see alive (pid) or over (None), for the quit question."""
        if pid is None:
            self.live_runs.pop(run_dir, None)
        else:
            self.live_runs[run_dir] = pid

    def running(self) -> dict[Path, int]:
        """Runs still going that this UI launched or watches: run dir → pid."""
        out = {run: pid for run, pid in self.live_runs.items() if pid_alive(pid)}
        out.update({c.run_dir: c.pid for c in self.training if c.running})
        return out

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every key the screen offers (footer or not) is also a palette command; only
        pefttool's own actions (not a table's "Cursor left" nor Textual's generic commands)."""
        seen: set[str] = set()
        for active in screen.active_bindings.values():
            binding, node = active.binding, active.node
            if not active.enabled or not binding.description or binding.action in seen \
                    or not _declared_by_pefttool(node, binding.action):
                continue
            seen.add(binding.action)
            key = binding.key_display or self.get_key_display(binding)
            yield SystemCommand(binding.description, f"{binding.tooltip or binding.description} ({key})",
                                lambda action=binding.action, node=node: self.run_action(action, node))

    # ------------------------------------------------------------------ errors and quitting

    def show_error(self, title: str, detail: str) -> None:
        """Explain a problem in a modal; the app carries on (the same error is shown once)."""
        current = self.screen
        if isinstance(current, ErrorModal) and (current.title_text, current.detail) == (title, detail):
            return
        self.push_screen(ErrorModal(title, detail))

    async def action_quit(self) -> None:
        running = self.running()
        if not running:
            self.exit(0)
            return

        def answer(choice: str | None) -> None:
            if choice is None:
                return
            if choice == "stop":
                for pid in running.values():
                    try:   # SIGINT: the engine checkpoints, then stops (exit status 130)
                        os.kill(pid, signal.SIGINT)
                    except ProcessLookupError:
                        pass
            self.exit(0)

        self.push_screen(QuitModal([p.name for p in running]), answer)


def make_app(
    runs_root: Path = Path("runs"),
    cwd: Path | None = None,
    attach: Path | None = None,
    run_command: list[str] | None = None,
    poll_interval: float = 0.5,
    estimate_plans: bool = True,
) -> PefttoolApp:
    """The app as `pefttool` / `pefttool tui` runs it.

    runs_root: where launched runs go and the Runs screen looks (relative to `cwd`).
    cwd: where local recipes are found (default: the current directory).
    attach: a run directory to open on start (a run started headless, say).
    run_command: the training command before the recipe path (tests swap in a fake trainer).
    poll_interval: seconds between reads of a followed run's events.jsonl; each read's events
        are drawn at once, so this is also the dashboard's refresh rate (the UI shares the
        cores with training: 0.5 s costs it a few % of one core).
    """
    return PefttoolApp(runs_root=runs_root, cwd=cwd, attach=attach, run_command=run_command,
                       poll_interval=poll_interval)
