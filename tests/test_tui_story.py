"""The whole story with the real engine and a tiny model: pick a recipe, change the learning
rate, launch, watch it reach 100 % and its evaluation appear, find it in Runs; and attach to
a run started headless."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from textual.widgets import DataTable, ProgressBar

from pefttool.events import EVENTS_FILE, StartEvent, read_events
from pefttool.tui.app import make_app
from pefttool.tui.screens.dashboard import DashboardScreen
from pefttool.tui.screens.runs import RunsScreen
from pefttool.tui.widgets.error_panel import ErrorPanel
from pefttool.tui.widgets.eval_table import EvalTable
from test_tui_screens import open_adjust, settle, type_into, wait_for
from test_tui_support import screen_text
from tiny_models import write_tiny_recipe

SIZE = (120, 40)


async def test_pick_adjust_launch_watch_and_find_the_run(tmp_path, tiny_classifier_dir):
    write_tiny_recipe(tmp_path, tiny_classifier_dir, name="tiny")
    app = make_app(runs_root=Path("runs"), cwd=tmp_path, poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        adjust = await open_adjust(pilot, "tiny")
        await type_into(pilot, "f-train--lr", "0.02")
        assert adjust.problems == [] and "train.lr=0.02" in screen_text(app)

        await pilot.press("ctrl+r")
        await pilot.pause()
        await pilot.press("y")   # the launch confirm
        await pilot.pause()
        dash = app.screen
        assert isinstance(dash, DashboardScreen) and dash.child is not None
        assert "train.lr=0.02" in dash.child.command
        await wait_for(pilot, lambda: dash.process_ended, timeout=120, what="the tiny run to finish")

        assert dash.child.poll() == 0, dash.child.stderr_tail()
        assert not dash.query_one(ErrorPanel).display
        assert dash.query_one(ProgressBar).percentage == 1.0
        assert dash.state.end.status == "completed"
        assert dash.state.start.recipe["train"]["lr"] == 0.02          # the change reached the run
        assert dash.query_one(EvalTable).row_count == len(dash.state.evals) >= 2
        text = screen_text(app)
        total = dash.state.total_steps
        assert f"step {total}/{total}" in text and "accuracy" in text and "100%" in text
        assert (dash.run_dir / "stderr.log").exists() and (dash.run_dir / "model").is_dir()
        assert dash.run_dir.parent == (tmp_path / "runs").resolve()

        await pilot.press("2")
        await settle(pilot)
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        table = runs.query_one(DataTable)
        row = table.get_row(str(dash.run_dir))
        assert row[0] == dash.run_dir.name and row[1] == "completed"
        assert row[2].startswith("acc ")   # short metric names fit 80 columns


async def test_attach_to_a_run_started_headless(tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, name="bg", rows=160,
                               overrides={"train.epochs": 3})
    run_dir = tmp_path / "runs" / "bg-headless"
    log = open(tmp_path / "nohup.out", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pefttool.cli", "run", str(recipe),
         "--set", f"output.dir={json.dumps(str(run_dir))}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 90
        while not any(isinstance(e, StartEvent) for e in read_events(run_dir / EVENTS_FILE)):
            assert process.poll() is None, (tmp_path / "nohup.out").read_text()
            assert time.monotonic() < deadline, "the headless run never started"
            time.sleep(0.1)

        app = make_app(runs_root=tmp_path / "runs", cwd=tmp_path, attach=run_dir, poll_interval=0.1)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            dash = app.screen
            assert isinstance(dash, DashboardScreen) and dash.child is None
            await wait_for(pilot, lambda: dash.state.start is not None, what="the events so far")
            assert dash.state.pid == process.pid
            await wait_for(pilot, lambda: dash.state.end is not None, timeout=120,
                           what="the attached run to finish")
            assert dash.state.end.status == "completed"
            assert dash.query_one(ProgressBar).percentage == 1.0
            assert dash.query_one(EvalTable).row_count >= 2
            assert not dash.query_one(ErrorPanel).display
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


async def test_stop_makes_the_real_engine_checkpoint_and_stop(tmp_path, tiny_classifier_dir):
    # Long enough that the stop lands first even when the pilot lags behind a loaded machine
    # (at 5 epochs the whole run, 940 steps, once finished in 26 s before the stop arrived);
    # the stop ends it within a step, so the length costs nothing when it works.
    write_tiny_recipe(tmp_path, tiny_classifier_dir, name="long", rows=2000,
                      overrides={"train.epochs": 50})
    app = make_app(runs_root=Path("runs"), cwd=tmp_path, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.screen.select_recipe("long")
        await pilot.press("l")
        await pilot.pause()
        await pilot.press("y")   # the launch confirm
        await pilot.pause()
        dash = app.screen
        await wait_for(pilot, lambda: len(dash.state.steps) >= 5, timeout=120, what="some steps")
        await pilot.press("s")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: dash.process_ended, timeout=120, what="the stop")
        assert dash.child.poll() == 130, dash.child.stderr_tail()
        assert dash.state.end.status == "interrupted"
        assert dash.state.end.step < dash.state.total_steps
        assert dash.state.checkpoints and Path(dash.state.checkpoints[-1].path).is_dir()
        assert not dash.query_one(ErrorPanel).display
        assert "INTERRUPTED" in screen_text(app)
