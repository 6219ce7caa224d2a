"""Issue 13 (TUI at 80 and 60 columns, resume/delete/confirm/palette) and issue 11's Try it.

Pilot at the sizes the issue reproduced (60×20, 80×24); training is the fake trainer or
canned events, except the Try it tests, which train a tiny model for three steps.
"""

from __future__ import annotations

import sys
import textwrap
import threading
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, RichLog

from pefttool.events import EndEvent, EventLog, PhaseEvent, StartEvent, StepEvent
from pefttool.runfolder.summary import RunState, summarize
from pefttool.tui.app import make_app
from pefttool.tui.screens.adjust import AdjustScreen
from pefttool.tui.screens.dashboard import DashboardScreen
from pefttool.tui.screens.modals import ConfirmModal, ErrorModal
from pefttool.tui.screens.recipes import RecipesScreen
from pefttool.tui.screens.runs import RunsScreen
from pefttool.tui.widgets.log_pane import LogPane
from pefttool.tui.widgets.run_progress import progress_line
from test_tui_screens import fake_app, open_adjust, settle, wait_for, workdir  # noqa: F401
from test_tui_support import canned_events, screen_text, write_canned_run

NARROW = (60, 20)
EIGHTY = (80, 24)


# ---------------------------------------------------------------- 5: usable at 60×20


async def test_adjust_at_60x20_has_a_value_column_and_tab_reaches_a_visible_input(fake_app):
    app = fake_app()
    async with app.run_test(size=NARROW) as pilot:
        screen = await open_adjust(pilot)
        for field in screen.query(Input):
            assert field.region.width >= 10, f"{field.id} is {field.region.width} wide"
        await pilot.press("tab")
        await pilot.pause()
        focused = app.focused
        assert isinstance(focused, Input) and focused.region.width >= 10
        assert app.screen.region.overlaps(focused.region)


async def test_the_footer_keeps_quit_at_60_columns(fake_app):
    app = fake_app()
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot)
        footer_row = screen_text(app).splitlines()[-1]
        assert "Launch" in footer_row and "3 Plugins" in footer_row and "q Quit" in footer_row, \
            footer_row


@pytest.mark.parametrize("size, keys", [
    (EIGHTY, ("^s Save as…", "^r Launch", "esc Back", "3 Plugins", "q Quit")),
    # At 60 it ended at "q" (the word cut off): its keys need 65 columns. Escape (Back on
    # every screen) now leaves the footer first, only when the keys do not fit.
    (NARROW, ("^s Save as…", "^r Launch", "3 Plugins", "q Quit")),
], ids=["80-columns-whole", "60-columns-keeps-quit"])
async def test_the_adjust_footer_keeps_its_keys(fake_app, size, keys):
    app = fake_app()
    async with app.run_test(size=size) as pilot:
        screen = await open_adjust(pilot)
        screen.set_focus(None)    # out of the inputs: the app's keys join the footer
        await pilot.pause()
        await pilot.pause()
        footer_row = screen_text(app).splitlines()[-1]
        for key in keys:
            assert key in footer_row, footer_row
        await pilot.press("escape")   # Escape still goes back, shown or not
        await settle(pilot)
        assert isinstance(app.screen, RecipesScreen)


# ---------------------------------------------------------------- 6: problems are never hidden


async def test_a_recipes_problems_can_be_scrolled_to_at_60x20(fake_app, workdir):
    app = fake_app()
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot)
        assert app.screen.select_recipe("broken")
        await pilot.pause()
        box = app.screen.query_one("#recipe-details-box")
        assert "problem(s)" in screen_text(app)          # first, in sight at once (issue 28.10)...
        box.focus()
        await pilot.press("end")
        await pilot.pause()
        text = screen_text(app)
        assert app.focused is box and "early stop" in text   # ...and the summary below reachable


async def test_adjust_lists_every_problem_and_no_change_the_user_did_not_make(fake_app, workdir):
    recipe = workdir / "fake.toml"
    text = recipe.read_text().replace('strategy = "lora"\n', "")   # strategy left to its default
    recipe.write_text(text.replace("lr = 0.005", "lr = 0\nwarmup_ratio = 7\ngrad_accum = 0\n"
                                   "batch_size_typo = 3"))
    app = fake_app()
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_adjust(pilot)
        await settle(pilot)
        assert len(screen.problems) >= 4
        side = screen.query_one("#adjust-side")
        side.focus()
        await pilot.press("end")
        await pilot.pause()
        shown = screen_text(app)
        assert f"✗ {len(screen.problems)} problem(s)" in shown
        assert "batch_size_typo" in shown                  # the last one, after scrolling
        assert "method.strategy" not in str(screen.query_one("#adjust-changes").render())
        assert "no changes yet" in shown


async def test_adjust_edits_model_and_data_paths_and_columns(fake_app, workdir):
    app = fake_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_adjust(pilot)
        assert screen.query_one("#f-data--train", Input).value == "train.csv"
        assert screen.query_one("#f-model--path", Input).value == "model"
        assert screen.query_one("#f-data--text_column", Input).value == ""   # the default
        field = screen.query_one("#f-data--train", Input)
        field.value = "missing.csv"
        await settle(pilot)
        assert any("data.train" in p for p in screen.problems)
        assert "data.train" in str(screen.query_one("#p-f-data--train").render())
        field.value = "train.csv"
        await settle(pilot)
        assert screen.problems == []


async def test_adjust_checks_a_data_column_against_the_files_header_as_you_type(fake_app, workdir):
    """Issue 28.4: a misspelt label column is named at once (the CSV header is read), not
    after launch has loaded the model and the data."""
    app = fake_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_adjust(pilot)
        field = screen.query_one("#f-data--label_column", Input)
        field.value = "sentiment"
        await settle(pilot)
        assert screen.problems == [f"data.label_column: no column 'sentiment' in the header row of "
                                   f"{workdir / 'train.csv'}; the columns are: text, label; set "
                                   f"data.label_column to one of them"]
        assert "no column 'sentiment'" in str(screen.query_one("#p-f-data--label_column").render())
        assert "✓ validates" not in screen_text(app)
        field.value = "label"
        await settle(pilot)
        assert screen.problems == []


async def _burst(app, *keys: str) -> None:
    """Keys as they arrive over SSH: all read before the first is handled (pilot.press
    waits for each key to be handled, which hides the misrouting)."""
    from textual import events
    from textual.keys import _character_to_key

    for key in keys:
        char = key if len(key) == 1 else None
        app.post_message(events.Key(_character_to_key(key) if char else key, char))


async def test_keys_in_a_burst_each_reach_the_field_focused_when_their_turn_comes(fake_app):
    """Issue 28.1: lr focused, then `5e-4`, Tab, Tab, End, BackSpace, `1`, `2` in one burst
    left lr "5e-412"-like and the batch size emptied; each key goes where the screen says."""
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        screen = await open_adjust(pilot)
        screen.query_one("#f-train--lr", Input).focus()
        await settle(pilot)
        await _burst(app, "5", "e", "-", "4", "tab", "tab", "end", "backspace", "1", "2")
        await settle(pilot)
        await settle(pilot)
        values = {field.id: field.value for field in screen.query(Input)}
        assert (values["f-train--lr"], values["f-train--epochs"], values["f-train--batch_size"]) \
            == ("5e-4", "2", "12")
        assert app.focused is screen.query_one("#f-train--batch_size", Input)
        assert screen.edited["train"]["lr"] == 5e-4 and screen.edited["train"]["batch_size"] == 12
        # a save in the same burst opens its dialog and the name typed after it lands there
        await _burst(app, "ctrl+s", "ctrl+a", "ctrl+k", "m", "i", "n", "e", "enter")
        await settle(pilot)
        await settle(pilot)
        assert isinstance(app.screen, AdjustScreen), screen_text(app)
        assert (screen.saved is not None and screen.saved[0].name == "mine.toml"
                and "lr = 0.0005" in screen.saved[0].read_text()), screen.saved[0].read_text()


async def test_escape_asks_before_discarding_edits_and_a_saved_recipe_is_listed_at_once(fake_app, workdir):
    """Issue 28.9: Esc discarded every edit without asking; a recipe saved from Adjust was
    missing from Recipes until F5 (not in the footer), which also moved the cursor to the top."""
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_adjust(pilot)
        await pilot.press("escape")                    # nothing edited: straight back
        await settle(pilot)
        assert isinstance(app.screen, RecipesScreen)
        assert "f5 Reload" in screen_text(app).splitlines()[-1]
        screen = await open_adjust(pilot)
        field = screen.query_one("#f-train--lr", Input)
        field.value = "0.02"
        await settle(pilot)
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmModal) and "Discard 1 change(s)" in app.screen.question
        await pilot.press("n")                         # keep editing: the edit is still there
        await settle(pilot)
        assert app.screen is screen and field.value == "0.02"
        await _burst(app, "ctrl+s", "ctrl+a", "ctrl+k", *"quick", "enter")
        await settle(pilot)
        await settle(pilot)
        assert (workdir / "quick.toml").exists()
        await pilot.press("escape")                    # saved: no question
        await settle(pilot)
        recipes = app.screen
        assert isinstance(recipes, RecipesScreen)
        await wait_for(pilot, lambda: recipes.current is not None and recipes.current.path.name == "quick.toml",
                       what="the saved recipe highlighted")
        screen = await open_adjust(pilot, "quick")
        screen.query_one("#f-train--lr", Input).value = "0.03"
        await settle(pilot)
        await pilot.press("escape")
        await settle(pilot)
        await pilot.press("y")                         # discard: back, the file as saved
        await settle(pilot)
        assert isinstance(app.screen, RecipesScreen) and "lr = 0.02" in (workdir / "quick.toml").read_text()
        await wait_for(pilot, lambda: app.screen.current is not None and app.screen.current.path.name == "quick.toml",
                       what="the cursor kept on the recipe adjusted")


def _details_text(screen) -> str:
    from rich.console import Console

    from pefttool.tui.widgets.recipe_details import RecipeDetails

    console = Console(width=70, record=True, file=open("/dev/null", "w"))
    console.print(screen.query_one(RecipeDetails)._render_entry())
    return console.export_text()


async def test_a_recipe_that_is_not_toml_shows_its_error_first_and_no_invented_values(fake_app, workdir):
    """Issue 28.10: a TOML syntax error showed "strategy lora · 3 epochs…" beside it, and Adjust
    listed "model: required key is missing"; a ✗ recipe's reason sat below its summary."""
    (workdir / "typo.toml").write_text('name = "typo"\n[model\npath = "model"\n')
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        screen = app.screen
        assert screen.select_recipe("typo")
        await pilot.pause()
        details = _details_text(screen)
        assert "✗ 1 problem(s)" in details and "epochs" not in details and "strategy" not in details
        row = screen.query_one(DataTable).get_row_at(screen.query_one(DataTable).cursor_row)
        assert row[1] == "typo" and row[2] == "?"
        await pilot.press("enter")                   # Adjust has nothing to show: the error says why
        await settle(pilot)
        assert isinstance(app.screen, ErrorModal) and "typo.toml" in app.screen.detail
        assert "required key" not in app.screen.detail
        await pilot.press("escape")
        await settle(pilot)
        assert screen.select_recipe("broken")        # readable, invalid: the problems come first
        await pilot.pause()
        details = _details_text(screen)
        assert details.index("✗ 2 problem(s)") < details.index("epochs"), details


async def test_adjust_offers_eval_keys_any_key_as_a_line_and_a_quick_trial(fake_app, workdir):
    """Issue 28.7: Adjust had no data.max_eval_rows or eval.* keys (a quick try still scored
    1,000 rows per evaluation); any key now goes in as a `key = value` line, and ctrl+t sets
    the small sizes of a quick trial, each in its field."""
    app = fake_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_adjust(pilot)
        for key in ("data--max_eval_rows", "eval--batch_size", "eval--every_steps"):
            assert screen.query(f"#f-{key}"), key
        await pilot.press("ctrl+t")
        await settle(pilot)
        assert screen.query_one("#f-train--max_steps", Input).value == "20"
        assert screen.current()["data"]["max_eval_rows"] == 64 and screen.current()["train"]["max_steps"] == 20
        raw = screen.query_one("#f-raw", Input)
        raw.value = 'train.weight_decay = 0.01; eval.metric = "macro_f1"'
        await settle(pilot)
        assert screen.problems == [] and screen.current()["eval"]["metric"] == "macro_f1"
        assert "train.weight_decay=0.01" in str(screen.query_one("#adjust-changes").render())
        raw.value = "train.weight_decay = 0.01; eval.metric = macro"      # unquoted text
        await settle(pilot)
        assert screen.problems[0].startswith("other keys: eval.metric: 'macro' is not a TOML value")
        raw.value = "train.wieght_decay = 0.01"                             # a typo: validation names it
        await settle(pilot)
        assert any("train.wieght_decay" in p for p in screen.problems), screen.problems
        assert screen.query_one("#p-f-raw").display
        raw.value = ""
        await settle(pilot)
        assert screen.problems == [] and "weight_decay" not in screen.current()["train"]


# ---------------------------------------------------------------- 7: the log keeps every character


async def test_wrapped_log_lines_keep_their_last_characters_beside_the_scrollbar(fake_app, workdir):
    message = "stopped by SIGINT after a checkpoint; continue with pefttool resume RUN_DIR XYZ"
    app = fake_app()
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot)
        run = write_canned_run(workdir / "runs", "lora-20250101-000000")
        app.open_run(run)
        await settle(pilot)
        pane = app.screen.query_one(LogPane)
        for i in range(12):
            pane.add_line(f"line {i}")
        pane.add_line(message, "warning")
        pane.scroll_end(animate=False)
        await pilot.pause()
        pane.focus()
        await pilot.pause()

        def inside() -> str:   # the pane's text left of its scrollbar, as the terminal shows it
            x0, y0, width, height = pane.scrollable_content_region
            rows = screen_text(app).splitlines()[y0:y0 + height]
            return "".join(row[x0:x0 + width].rstrip() + " " for row in rows)

        # the layout settles over a few frames after the screen opens: wait for it, not a guess
        await wait_for(pilot, lambda: "XYZ" in inside(), timeout=10, what="the line's last word")
        shown = inside()
        assert "continue with pefttool resume" in " ".join(shown.split()), shown


# ---------------------------------------------------------------- dashboard: phase, whole run, before


def resumed_run(root: Path, name: str = "res-20250101-000000") -> Path:
    """A run interrupted at step 20, then resumed to the end: two start and two end events."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    log = EventLog(run_dir)
    first = canned_events(run_dir, name="res", upto=20)
    for event in first:
        log.write(event)
    t = first[-1].time
    log.write(EndEvent(status="interrupted", step=20, duration_s=40.0, exit_code=130,
                       message="stopped by SIGINT after a checkpoint; continue with pefttool resume",
                       time=t + 1))
    # `pefttool resume` says it is loading before its start event (a pid to stop, a phase)
    log.write(PhaseEvent(phase="loading", pid=999_999, time=t + 60))
    start = first[0]
    log.write(StartEvent(run_dir=str(run_dir), recipe=start.recipe, strategy="lora", total_steps=60,
                         steps_per_epoch=20, epochs=3, params_total=start.params_total,
                         params_trainable=start.params_trainable, model_memory_mb=86.6,
                         device="cpu", pid=999_999, resumed_from_step=20, time=t + 100))
    for step in range(22, 61, 2):
        log.write(StepEvent(step=step, total_steps=60, epoch=step / 20, loss=0.3, lr=1e-4,
                            tokens_per_s=1000.0, samples_per_s=10.0, elapsed_s=30 + step,
                            eta_s=60 - step, rss_mb=800.0, time=t + 100 + step))
    log.write(EndEvent(status="completed", step=60, duration_s=65.0, metric="accuracy", best=0.8,
                       best_step=40, time=t + 166))
    log.close()
    return run_dir


def test_the_progress_line_shows_the_phase_and_the_whole_runs_duration(tmp_path):
    run = resumed_run(tmp_path)
    state = summarize(run)
    assert state.segments == 2
    assert "completed in 1m 45s" in progress_line(state)        # 40 s + 65 s, not the 65 s part
    events = canned_events(run, upto=20)
    loading = RunState(run)
    loading.apply(events + [EndEvent(status="interrupted", step=20, duration_s=40.0,
                                     time=events[-1].time + 1),
                            PhaseEvent(phase="loading", time=events[-1].time + 60)])
    assert loading.duration_s == 40.0 and loading.end is None      # the gap is not counted
    assert progress_line(loading).startswith("loading the model and data · step 20/60")
    assert "ETA" not in progress_line(loading)                     # the old segment's ETA
    live = RunState(tmp_path / "x")
    live.apply(canned_events(tmp_path / "x", upto=10))
    live.apply([PhaseEvent(phase="evaluating", step=10, done=3, total=10, time=live.last_time + 1)])
    assert progress_line(live).startswith("evaluating 3/10 · step 10/60")
    live.apply([StepEvent(step=11, total_steps=60, epoch=0.55, loss=0.3, lr=1e-4, tokens_per_s=1.0,
                          samples_per_s=1.0, elapsed_s=20, eta_s=80, rss_mb=1.0,
                          time=live.last_time + 1)])
    assert "evaluating" not in progress_line(live)


def test_progress_follows_the_phase_and_says_why_a_resume_goes_back(tmp_path):
    """Issue 28.5: "evaluating 0/8 · step 16/38" while the run evaluated at step 19 (step
    events come every log_every steps); a resume went "42 % step 16" → "26 % step 10/38" with
    no word that it went back to its checkpoint at step 10."""
    run = tmp_path / "r"
    state = RunState(run)
    events = canned_events(run, upto=16)          # step events every 2 steps, 60 in all
    state.apply(events)
    t = state.last_time
    state.apply([PhaseEvent(phase="evaluating", step=19, done=0, total=8, time=t + 1)])
    assert progress_line(state).startswith("evaluating 0/8 · step 19/60")
    state.apply([EndEvent(status="interrupted", step=19, duration_s=40.0, exit_code=130, time=t + 2),
                 PhaseEvent(phase="loading", pid=999_999, time=t + 30)])
    assert progress_line(state).startswith("loading the model and data · step 19/60")   # not back yet
    start = events[0]
    state.apply([StartEvent(run_dir=str(run), recipe=start.recipe, strategy="lora", total_steps=60,
                            steps_per_epoch=20, epochs=3, params_total=1, params_trainable=1,
                            model_memory_mb=1.0, device="cpu", pid=999_999, resumed_from_step=10,
                            time=t + 60)])
    assert state.step == 10
    assert "resumed at step 10 (its checkpoint): 11–19 again" in progress_line(state)
    state.apply([StepEvent(step=20, total_steps=60, epoch=1.0, loss=0.3, lr=1e-4, tokens_per_s=1.0,
                           samples_per_s=1.0, elapsed_s=50, eta_s=80, rss_mb=1.0, time=t + 90)])
    assert state.step == 20 and "again" not in progress_line(state)


async def test_the_dashboard_gives_the_runs_paths_and_commands_and_writes_its_plot(fake_app, workdir):
    """Issue 28.16: see and copy the run's path and the commands that rerun, resume, plot,
    compare and export it; write its plot and say where."""
    import shlex

    run = write_canned_run(workdir / "runs", "lora-20250101-000000")
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        app.open_run(run)
        await settle(pilot)
        await pilot.press("i")
        await settle(pilot)
        assert isinstance(app.screen, ErrorModal)
        path = shlex.quote(str(run.resolve()))
        for command in (f"pefttool resume {path}", f"pefttool plot {path} OTHER_RUN --out compare.png",
                        f"pefttool export {path} --out EXPORT_DIR --merge", f"pefttool tui --attach {path}",
                        f"pefttool run {shlex.quote(str(run.resolve() / 'recipe.toml'))}"):
            assert command in app.screen.detail and command in app.clipboard, command
        await pilot.press("escape")
        await settle(pilot)
        await pilot.press("p")
        await wait_for(pilot, lambda: (run / "plots.png").is_file(), timeout=60, what="the plot")
        assert (run / "plots.png").stat().st_size > 1000


def test_the_dashboard_shows_gpu_memory_and_utilisation_on_cuda(monkeypatch):
    """Issue 28.18: on CUDA the step events carry torch's peak, the GPU's size and NVML's
    utilisation (when pynvml reads it), and the stats line shows them beside tokens/s."""
    import types

    import torch

    from pefttool.engine import gpu_figures
    from pefttool.tui.widgets.run_progress import stats_line

    assert gpu_figures(torch.device("cpu")) == (None, None, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: 87)
    cuda = types.SimpleNamespace(type="cuda")
    assert gpu_figures(cuda) == (3072.0, 81920.0, 87.0)

    def no_nvml(device=None):
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    assert gpu_figures(cuda) == (3072.0, 81920.0, None)
    state = RunState(Path("r"))
    state.apply([StepEvent(step=2, total_steps=10, epoch=0.2, loss=0.5, lr=1e-4, tokens_per_s=5000.0,
                           samples_per_s=20.0, elapsed_s=4.0, eta_s=16.0, rss_mb=900.0, gpu_mem_mb=3072.0,
                           gpu_total_mb=81920.0, gpu_util=87.0, time=1.0)])
    line = stats_line(state)
    assert "GPU 3.00 GiB/80.00 GiB 87% busy" in line and "tokens" in line, line


async def test_dashboard_at_80_columns_shows_every_figure_and_the_baseline_as_before(fake_app, workdir):
    run = resumed_run(workdir / "runs")
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        app.open_run(run)
        await settle(pilot)
        dash = app.screen
        await wait_for(pilot, lambda: dash.state.end is not None, what="the events")
        text = screen_text(app)
        for shown in ("COMPLETED", "294.9K/22.7M params", "model 87 MiB", "resumed ×1",
                      "completed in 1m 45s", "eval_loss", "before", "★",
                      "resumed from the checkpoint at step 20", "run completed at step 60"):
            assert shown in text, f"{shown!r} not on screen:\n{text}"
        table = dash.query_one("#eval-table", DataTable)
        first = table.get_row_at(0)
        assert first[0] == "0" and first[1] == "before"             # never ★ / best
        assert table.region.right <= 80


# ---------------------------------------------------------------- 11: 80 columns


async def test_recipes_and_runs_at_80_columns_cut_nothing(fake_app, workdir):
    write_canned_run(workdir / "runs", "lora-20250101-000000")
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        text = screen_text(app)
        assert "built-in" in text and "q Quit" in text
        await pilot.press("2")
        await settle(pilot)
        text = screen_text(app)
        table = app.screen.query_one(DataTable)
        started = table.get_row_at(0)[5]
        assert started and started in text, text
        assert table.virtual_size.width <= table.content_region.width + 1


# ---------------------------------------------------------------- 10: in the TUI


async def test_runs_are_sorted_newest_first(fake_app, workdir):
    write_canned_run(workdir / "runs", "a-old", t0=1_700_000_000.0)
    write_canned_run(workdir / "runs", "z-older", t0=1_600_000_000.0)
    write_canned_run(workdir / "runs", "m-new", t0=1_800_000_000.0)
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one(DataTable)
        assert [table.get_row_at(i)[0] for i in range(3)] == ["m-new", "a-old", "z-older"]


async def test_1_returns_to_the_recipe_list_from_a_dashboard(fake_app, workdir):
    run = write_canned_run(workdir / "runs", "lora-20250101-000000")
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        app.open_run(run)
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)
        await pilot.press("1")
        await pilot.pause()
        assert isinstance(app.screen, RecipesScreen)
        await pilot.press("2")
        await pilot.pause()
        await pilot.press("1")
        await pilot.pause()
        assert isinstance(app.screen, RecipesScreen)


async def test_launch_asks_first_and_no_starts_nothing(fake_app, workdir):
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        assert app.screen.select_recipe("fake")
        await pilot.press("l")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, RecipesScreen) and app.training == []
        assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


async def test_the_palette_offers_every_screen_action(fake_app, workdir):
    run = write_canned_run(workdir / "runs", "lora-20250101-000000")
    (run / ".pefttool-run").write_text("{}")   # a pefttool run (Delete refuses any other folder)
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Launch", "Reload", "Recipes", "Runs", "Plugins", "Adjust"} <= titles, titles
        await pilot.press("2")
        await settle(pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Delete", "Open", "Reload"} <= titles, titles
        command = next(c for c in app.get_system_commands(app.screen) if c.title == "Delete")
        await command.callback()
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)


async def test_runs_sort_and_a_run_stopped_while_loading_is_the_newest(fake_app, workdir):
    """Issue 28.14: a run stopped while loading sorted below older runs with "started"
    blank; the header read "runs under runs"; there was no sort; the palette listed Textual's
    generic commands ("Cursor left", "Page Left", two "Quit")."""
    from test_tui_support import T0

    from pefttool.events import EndEvent, EventLog, PhaseEvent

    runs = workdir / "runs"
    write_canned_run(runs, "alpha-20250101-000000", t0=T0)
    write_canned_run(runs, "beta-20250102-000000", t0=T0 + 86_400, upto=40, status="interrupted")
    loading = runs / "gamma-20250103-000000"
    loading.mkdir()
    log = EventLog(loading)
    log.write(PhaseEvent(phase="loading", pid=999_999, time=T0 + 2 * 86_400))
    log.write(EndEvent(status="interrupted", step=0, duration_s=12.0, time=T0 + 2 * 86_400 + 12))
    log.close()
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await pilot.press("2")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await wait_for(pilot, lambda: len(screen.runs) == 3, what="three runs")
        table = screen.query_one(DataTable)
        names = lambda: [str(table.get_row_at(i)[0]) for i in range(table.row_count)]  # noqa: E731
        assert names()[0] == "gamma-20250103-000000" and str(table.get_row_at(0)[5]).strip() not in ("", "-")
        assert "3 runs in runs · newest first (o: sort)" in screen_text(app)
        orders = []
        for _ in range(4):
            await pilot.press("o")
            await pilot.pause()
            orders.append(names())
        assert orders[0][-1] == "alpha-20250101-000000"        # status: interrupted before completed
        assert orders[1][0] == "alpha-20250101-000000"         # best: the only one with a best first
        assert orders[2] == sorted(orders[2])                    # name
        assert orders[3][0] == "gamma-20250103-000000"          # and round to newest first
        titles = [c.title for c in app.get_system_commands(screen)]
        assert "Sort" in titles and "Delete" in titles and titles.count("Quit") == 1, titles
        assert not {"Cursor left", "Page Left", "Theme", "Keys"} & set(titles), titles


async def test_delete_asks_and_never_touches_a_folder_pefttool_did_not_write(fake_app, workdir):
    runs = workdir / "runs"
    foreign = write_canned_run(runs, "foreign-20250101-000000")        # events but no marker
    ours = write_canned_run(runs, "ours-20250102-000000", t0=1_735_800_000.0)
    (ours / ".pefttool-run").write_text("{}")
    (ours / "model").mkdir()
    mine = write_canned_run(runs, "mine-20250103-000000", t0=1_735_900_000.0)
    (mine / ".pefttool-run").write_text("{}")
    (mine / "notes.txt").write_text("the user's own file")
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        names = [r.path.name for r in screen.runs]

        async def delete(name: str, answer: str) -> None:
            screen.query_one(DataTable).move_cursor(row=names.index(name))
            await pilot.pause()
            await pilot.press("d")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmModal)
            await pilot.press(answer)
            await settle(pilot)

        await delete("ours-20250102-000000", "n")
        assert ours.is_dir()
        # a folder without pefttool's marker is refused before the confirm: a user's own folder
        # that merely holds an events.jsonl, a recipe.toml and their data keeps every file
        (foreign / "recipe.toml").write_text("# the user's own recipe\n")
        (foreign / "mydata.csv").write_text("text,label\n")
        before = sorted(p.name for p in foreign.iterdir())
        screen.query_one(DataTable).move_cursor(row=names.index("foreign-20250101-000000"))
        await pilot.pause()
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ErrorModal) and "not written by pefttool" in app.screen.detail
        assert sorted(p.name for p in foreign.iterdir()) == before
        await pilot.press("escape")
        await delete("ours-20250102-000000", "y")
        assert not ours.exists()
        await delete("mine-20250103-000000", "y")
        assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


FAKE_RESUMER = textwrap.dedent('''
    """`run` is not used; `resume RUN_DIR --quiet` appends a second segment to events.jsonl."""
    import sys, time
    from pathlib import Path
    from pefttool.events import EndEvent, EventLog, StartEvent, StepEvent
    assert sys.argv[1] == "resume", sys.argv
    run_dir = Path(sys.argv[2])
    log = EventLog(run_dir)
    log.write(StartEvent(run_dir=str(run_dir), recipe={"name": "res"}, strategy="lora",
                         total_steps=60, steps_per_epoch=20, epochs=3, params_total=1000,
                         params_trainable=10, model_memory_mb=1.0, device="cpu",
                         resumed_from_step=20))
    for step in range(21, 61):
        time.sleep(0.01)
        log.write(StepEvent(step=step, total_steps=60, epoch=step / 20, loss=0.2, lr=1e-4,
                            tokens_per_s=10.0, samples_per_s=1.0, elapsed_s=step, eta_s=60 - step,
                            rss_mb=1.0))
    log.write(EndEvent(status="completed", step=60, duration_s=5.0, metric="accuracy", best=0.8,
                       best_step=60))
''')


def _interrupted_run_and_app(workdir, tmp_path):
    """A canned interrupted run (with the checkpoint it stopped at: one without any is not
    resumable) and an app whose `resume` is the fake resumer."""
    script = tmp_path / "fake_resumer.py"
    script.write_text(FAKE_RESUMER)
    run = write_canned_run(workdir / "runs", "res-20250101-000000", status="interrupted")
    (run / "checkpoints" / "step-0000002").mkdir(parents=True)
    (run / "checkpoints" / "step-0000002" / "trainer_state.json").write_text("{}")
    app = make_app(runs_root=Path("runs"), cwd=workdir, run_command=[sys.executable, str(script), "run"],
                   poll_interval=0.05)
    return run, app


async def test_a_run_stopped_while_loading_offers_no_resume(workdir, tmp_path):
    """Issue 28.6: `s` while a run loaded: the log said both "nothing was trained or saved"
    and "interrupted after a checkpoint", and `r` was offered, failing only in stderr.log."""
    from pefttool.tui.child import describe_exit

    assert "nothing to resume" in describe_exit(130, checkpointed=False)
    assert "after a checkpoint" in describe_exit(130)
    run, app = _interrupted_run_and_app(workdir, tmp_path)
    bare = write_canned_run(workdir / "runs", "bare-20250102-000000", status="interrupted", upto=0)
    async with app.run_test(size=EIGHTY) as pilot:
        await pilot.press("2")
        await settle(pilot)
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.runs) == 2, what="two runs")
        for i, state in enumerate(screen.runs):
            screen.query_one(DataTable).move_cursor(row=i)
            await pilot.pause()
            assert screen.check_action("resume", ()) is (state.path == run), state.path.name
        app.open_run(bare)
        await settle(pilot)
        assert "r Resume" not in screen_text(app)     # (crashed or interrupted alike: no checkpoint)
        await pilot.press("r")                       # nothing starts
        await settle(pilot)
        assert app.training == []


async def test_an_interrupted_runs_dashboard_resumes_it(workdir, tmp_path):
    run, app = _interrupted_run_and_app(workdir, tmp_path)
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        app.open_run(run)
        await settle(pilot)
        assert "r Resume" in screen_text(app)
        await pilot.press("r")
        await pilot.pause()
        dash = app.screen
        assert isinstance(dash, DashboardScreen) and dash.child is not None
        assert dash.child.command[-3:] == ["resume", str(run.resolve()), "--quiet"]
        await wait_for(pilot, lambda: dash.process_ended and dash.state.end is not None
                       and dash.state.end.status == "completed", what="the resumed run")
        text = screen_text(app)
        assert "COMPLETED" in text and "resumed ×1" in text and "r Resume" not in text
        assert len(app.screen_stack) == 2    # the old read-only dashboard was replaced


async def test_r_in_a_burst_starts_one_resume(workdir, tmp_path):
    """Keys arrive in bursts over SSH: `r` three times starts one resume; the others are told
    it is running (a second resume was refused by the lock, and its exit 2 became the
    dashboard's status)."""
    run, app = _interrupted_run_and_app(workdir, tmp_path)
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        started = [app.resume_run(run) for _ in range(3)]   # one tick: the first child is alive
        assert started[0] is not None and started[1:] == [None, None]
        assert len(app.training) == 1
        await wait_for(pilot, lambda: not started[0].running, what="the resumed run")


# ---------------------------------------------------------------- Try it (issue 11)


async def test_try_it_stays_responsive_while_the_model_loads(fake_app, workdir, monkeypatch):
    from pefttool.tui.screens import try_it

    run = write_canned_run(workdir / "runs", "lora-20250101-000000")
    (run / "model").mkdir()
    release = threading.Event()

    class Loaded:
        class recipe:
            class task:
                type = "classification"

    def slow_load(run_dir):
        assert release.wait(30)
        return Loaded()

    monkeypatch.setattr(try_it, "load_model", slow_load)
    monkeypatch.setattr(try_it, "classify", lambda loaded, text: ("positive", {"positive": 0.75,
                                                                              "negative": 0.25}))
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        app.try_run(run)
        await pilot.pause()
        await pilot.press(*"a lovely film")          # typed while the model loads
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert "answered when it is in" in screen_text(app)
        assert screen.query_one(Input).value == "a lovely film"
        release.set()
        await wait_for(pilot, lambda: "75.0%" in screen_text(app), what="the answer")
        text = screen_text(app)
        assert "> a lovely film" in text and "positive  (75.0%)" in text and "negative" in text


async def test_try_it_fills_the_runs_prompt_template_and_counts_the_loading_time(fake_app, workdir,
                                                                                  tmp_path, monkeypatch):
    """Issue 28.13: Try it on a causal-LM run with a prompt template sent the raw text (the
    model answered "Awesome. I'm glad to have you…"), not the prompt training built; loading
    (~3 min) showed no progress."""
    import tomllib

    import pefttool.generate
    from pefttool.recipe import validate_recipe
    from pefttool.tui.screens import try_it
    from tiny_models import write_tiny_recipe

    path = write_tiny_recipe(tmp_path, tmp_path / "model", task="causal-lm")
    text = path.read_text().replace('prompt_column = "prompt"',
                                    'prompt_template = "Is this review positive or negative?\\n\\nReview: {prompt}"')
    recipe = validate_recipe(tomllib.loads(text), source=str(path), base_dir=tmp_path, check_files=False)
    run = write_canned_run(workdir / "runs", "sft-20250101-000000")
    (run / "model").mkdir()
    release = threading.Event()
    sent: list = []

    class Loaded:
        pass

    Loaded.recipe = recipe

    def slow_load(run_dir):
        assert release.wait(30)
        return Loaded()

    def fake_generate(loaded, prompt, **kwargs):
        sent.append(prompt)
        return "positive"

    monkeypatch.setattr(try_it, "load_model", slow_load)
    monkeypatch.setattr(pefttool.generate, "generate", fake_generate)
    app = fake_app()
    async with app.run_test(size=(100, 24)) as pilot:
        await settle(pilot)
        app.try_run(run)
        await pilot.pause(1.3)
        assert "loading the model… 1s" in screen_text(app) or "loading the model… 2s" in screen_text(app), \
            screen_text(app)
        release.set()
        await wait_for(pilot, lambda: app.screen.loaded is not None, what="the model")
        status = str(app.screen.query_one("#try-status").render())
        assert "your text fills {prompt} of the run's data.prompt_template" in status, status
        await pilot.press(*"a lovely film", "enter")
        await wait_for(pilot, lambda: sent and not app.screen.busy, what="the reply")
        assert sent == ["Is this review positive or negative?\n\nReview: a lovely film"]


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, tiny_classifier_dir, tiny_causal_dir):
    from pefttool.engine import run_recipe
    from pefttool.recipe import load_recipe
    from tiny_models import write_tiny_recipe

    out = {}
    for task, model in (("classification", tiny_classifier_dir), ("causal-lm", tiny_causal_dir)):
        folder = tmp_path_factory.mktemp(task)
        recipe = load_recipe(write_tiny_recipe(folder, model, task=task, overrides={
            "train.max_steps": 3, "eval.before_training": False}))
        out[task] = run_recipe(recipe).run_dir
    return out


async def test_try_it_classifies_with_the_runs_model(finished_runs, tmp_path):
    from pefttool.trained import load_trained, predict

    run = finished_runs["classification"]
    expected_label, expected = predict(load_trained(run), ["a lovely, moving film"])[0]
    app = make_app(runs_root=Path("runs"), cwd=tmp_path)
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        app.open_run(run)
        await settle(pilot)
        await pilot.press("t")
        await wait_for(pilot, lambda: app.screen.loaded is not None, timeout=120, what="the model")
        await pilot.press(*"a lovely, moving film", "enter")
        await wait_for(pilot, lambda: not app.screen.busy and app.screen.query_one(RichLog).lines,
                       timeout=60, what="the answer")
        text = screen_text(app)
        assert f"{expected_label}  ({expected[expected_label]:.1%})" in text, text
        for label, p in expected.items():
            assert f"{p:6.1%}" in text


async def test_try_it_replies_with_a_causal_runs_model(finished_runs, tmp_path):
    run = finished_runs["causal-lm"]
    app = make_app(runs_root=Path("runs"), cwd=tmp_path)
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        app.try_run(run)
        await wait_for(pilot, lambda: app.screen.loaded is not None, timeout=120, what="the model")
        assert "causal-lm" in screen_text(app)
        await pilot.press(*"Is this positive? great", "enter")
        await wait_for(pilot, lambda: not app.screen.busy, timeout=120, what="the reply")
        lines = [strip.text for strip in app.screen.query_one(RichLog).lines]
        assert lines[0].startswith("> Is this positive? great")
        assert not any(line.startswith("✗") for line in lines), lines
        assert len(lines) >= 2


# ---------------------------------------------------------------- issue 11: the plan while adjusting


async def test_adjust_shows_the_plan_estimate_and_follows_the_batch_size(fake_app, tiny_recipe,
                                                                        monkeypatch):
    import pefttool.plan as plan

    monkeypatch.setattr(plan, "runtime_baseline", lambda refresh=False: 400 * 2**20)  # no probe
    tiny_recipe("lora", name="tiny")
    app = fake_app(estimate_plans=True)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_adjust(pilot, "tiny")
        shown = lambda: str(screen.query_one("#adjust-plan").render())  # noqa: E731
        await wait_for(pilot, lambda: "CPU peak" in shown(), timeout=60, what="the plan line")
        first = shown()
        assert first.startswith("plan: lora: ") and "trainable of" in first, first
        field = screen.query_one("#f-train--batch_size", Input)
        field.value = "4096"
        await wait_for(pilot, lambda: "CPU peak" in shown() and shown() != first, timeout=60,
                       what="a new estimate for batch 4096")
        grown = shown()
        mib = lambda text: float(text.split("CPU peak ≈ ")[1].split()[0].replace(",", ""))  # noqa: E731
        assert mib(grown) > mib(first), (first, grown)   # a bigger batch keeps more activations
        field.value = "0"                                 # invalid: no estimate is shown
        await wait_for(pilot, lambda: bool(screen.problems) and shown() == "", timeout=30,
                       what="the plan line cleared for an invalid recipe")


async def test_ctrl_o_in_adjust_shows_the_whole_plan_of_the_edits_for_a_gpu_size(fake_app, tiny_recipe,
                                                                                  monkeypatch):
    """Issue 28.17: the plan in Adjust: steps and tokens from the data, memory by part side by
    side, a GPU estimate for the size typed (another size: another estimate), of the edits."""
    import pefttool.plan as plan

    monkeypatch.setattr(plan, "runtime_baseline", lambda refresh=False: 400 * 2**20)  # no probe
    tiny_recipe("lora", name="tiny")
    app = fake_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_adjust(pilot, "tiny")
        screen.query_one("#f-train--batch_size", Input).value = "4"
        await wait_for(pilot, lambda: not screen.problems, timeout=30, what="the edit validated")
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PlanScreen", timeout=10, what="the plan")
        shown = lambda: str(app.screen.query_one("#plan").render())  # noqa: E731
        await wait_for(pilot, lambda: "steps/epoch" in shown(), timeout=60, what="the plan text")
        text = shown()
        assert "batch 4 x length" in text and "GPU 24 GiB" in text and "activations" in text, text
        field = app.screen.query_one("#plan-gpu-gib", Input)
        field.value = "80"
        field.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: "GPU 80 GiB" in shown(), timeout=60, what="the 80 GiB plan")
        field.value = "lots"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "is not a size in GiB" in shown(), timeout=10, what="one line")
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen


async def test_p_on_recipes_previews_the_rows_as_the_model_sees_them(fake_app, tiny_recipe, workdir):
    tiny_recipe("lora", task="causal-lm", name="tinylm")
    app = fake_app()
    async with app.run_test(size=EIGHTY) as pilot:
        await settle(pilot)
        assert app.screen.select_recipe("tinylm")
        await pilot.press("p")
        shown = lambda: str(app.screen.query_one("#preview").render())  # noqa: E731
        await wait_for(pilot, lambda: "max_length" in shown(), timeout=60, what="the preview")
        text = shown()
        assert "recipe tinylm: causal-lm" in text and "[[" in text, text   # loss tokens marked
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, RecipesScreen)
        assert app.screen.select_recipe("broken")          # a recipe with problems: said, not run
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, ErrorModal)


async def test_an_attached_crashed_run_resumed_elsewhere_keeps_its_status_in_view_at_60x20(fake_app, workdir):
    # The crash's error panel held the focus; hiding it on the resume handed the focus to the
    # log, and the narrow screen scrolled down to it: RUNNING and the progress line went out of view.
    import os

    run_dir = workdir / "runs" / "crash-1"
    run_dir.mkdir(parents=True)
    log = EventLog(run_dir)
    first = canned_events(run_dir, name="crash", upto=20)
    for event in first:
        if isinstance(event, StartEvent):
            event.pid = 999_999            # a process that is gone: the run crashed
        log.write(event)
    log.close()
    app = fake_app()
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot)
        app.open_run(run_dir)
        dash = app.screen
        await wait_for(pilot, lambda: dash.process_ended, what="the crash")
        await settle(pilot)
        assert "CRASHED" in screen_text(app).splitlines()[1]
        t, start = first[-1].time, first[0]
        log = EventLog(run_dir)            # `pefttool resume` from another terminal
        log.write(PhaseEvent(phase="loading", pid=os.getpid(), time=t + 60))
        log.write(StartEvent(run_dir=str(run_dir), recipe=start.recipe, strategy="lora", total_steps=60,
                             steps_per_epoch=20, epochs=3, params_total=start.params_total,
                             params_trainable=start.params_trainable, model_memory_mb=86.6,
                             device="cpu", pid=os.getpid(), resumed_from_step=20, time=t + 100))
        for step in (22, 24):
            log.write(StepEvent(step=step, total_steps=60, epoch=step / 20, loss=0.3, lr=1e-4,
                                tokens_per_s=1000.0, samples_per_s=10.0, elapsed_s=30 + step,
                                eta_s=60 - step, rss_mb=800.0, time=t + 100 + step))
        log.close()
        await wait_for(pilot, lambda: not dash.process_ended and dash.state.last_step.step == 24,
                       what="the resumed steps")
        for _ in range(4):                 # the follower never finishes (a live pid): no settle()
            await pilot.pause(0.05)
        rows = screen_text(app).splitlines()
        assert "RUNNING" in rows[1], "\n".join(rows)
        assert any("step 24/60" in row for row in rows[:8]), "\n".join(rows)


def test_one_epoch_is_not_1_epochs(tmp_path):
    """Issue 28.15: "1 epochs" in the recipe details."""
    from pefttool.catalog import RecipeEntry
    from pefttool.tui.widgets.recipe_details import summary_rows

    def train_row(epochs):
        entry = RecipeEntry(path=tmp_path / "r.toml", origin="local", data={"train": {"epochs": epochs}})
        return dict(summary_rows(entry))["train"]

    assert train_row(1).startswith("1 epoch ") and train_row(3).startswith("3 epochs")
