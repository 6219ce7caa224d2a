"""The TUI's pure helpers: recipe editing, saving without clobbering, child exit meanings."""

from __future__ import annotations

import os

import copy
import signal
import tomllib
from pathlib import Path

import pytest

from pefttool.recipe import read_toml
from pefttool.tui.child import describe_exit, new_run_dir, tail
from pefttool.tui.recipe_edit import (absolutize_paths, common_fields, format_value,
                                      overrides_between, parse_text, patch_toml, problems_for,
                                      recipe_text, set_dotted, write_new_file)
from pefttool.tui.widgets.loss_curve import thin

LORA = Path(__file__).resolve().parent.parent / "recipes" / "lora.toml"


def spec(key):
    return next(s for s in common_fields() if s.key == key)


def test_typed_text_becomes_the_value_the_schema_expects():
    assert parse_text(spec("train.lr"), "2e-4") == 2e-4
    assert parse_text(spec("train.epochs"), "3") == 3
    assert parse_text(spec("train.lr"), "fast") == "fast"     # validation then names the type
    assert parse_text(spec("train.lr"), "  ") is None          # empty: back to the default
    assert parse_text(spec("output.dir"), "runs/{name}") == "runs/{name}"
    assert parse_text(spec("name"), "123") == "123"            # a name stays a string
    assert parse_text(spec("early_stopping.enabled"), "false") is False
    assert format_value(spec("train.lr"), 0.001) == "0.001"
    assert format_value(spec("output.dir"), "runs/x") == "runs/x"


def test_a_change_becomes_set_overrides_and_a_removal_cannot():
    original = read_toml(LORA)
    edited = copy.deepcopy(original)
    set_dotted(edited, "train.lr", 2e-4)
    set_dotted(edited, "train.max_steps", 5)
    assert overrides_between(original, edited) == ["train.lr=0.0002", "train.max_steps=5"]
    set_dotted(edited, "method.r", None)
    assert overrides_between(original, edited) is None


def test_saving_keeps_the_comments_and_reproduces_the_edit():
    original = read_toml(LORA)
    edited = copy.deepcopy(original)
    set_dotted(edited, "train.lr", 2e-4)
    set_dotted(edited, "method.r", None)
    set_dotted(edited, "train.max_steps", 50)
    text = recipe_text(edited, LORA.read_text(), str(LORA))
    assert tomllib.loads(text) == edited
    assert "lr = 0.0002                                  # adapters want a higher rate" in text
    assert "max_steps = 50" in text and "\nr = 16" not in text


def test_patching_gives_up_on_what_it_cannot_reproduce():
    text = 'name = "x"\nlabels = [\n  "a",\n  "b",\n]\n'
    assert patch_toml(text, {"name": "y", "labels": ["a", "b"]}) is None
    edited = {"name": "y", "labels": ["a", "b"]}
    assert tomllib.loads(recipe_text(edited, text, "x.toml")) == edited   # plain TOML instead


def test_relative_paths_still_work_from_where_the_copy_is_saved(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "train.csv").write_text("text,label\n")
    data = {"data": {"train": "train.csv"}, "model": {"path": "package:x/y"}}
    moved = absolutize_paths(data, tmp_path / "recipes", tmp_path)
    assert moved["data"]["train"] == str((tmp_path / "recipes" / "train.csv").resolve())
    assert moved["model"]["path"] == "package:x/y"
    assert absolutize_paths(data, tmp_path / "recipes", tmp_path / "recipes") == data


def test_a_new_file_never_replaces_an_existing_one(tmp_path):
    target = tmp_path / "mine.toml"
    write_new_file(target, "a = 1\n")
    with pytest.raises(FileExistsError):
        write_new_file(target, "a = 2\n")
    assert target.read_text() == "a = 1\n"


def test_problems_are_matched_to_their_field():
    problems = ["train.lr: Input should be greater than 0 (got 0)", "train.lr_x: unknown key",
                "method.r: too big"]
    assert problems_for("train.lr", problems) == problems[:1]
    assert problems_for("method.r", problems) == problems[2:]


def test_exit_statuses_read_as_advice():
    assert "interrupted" in describe_exit(130)
    assert "bad input" in describe_exit(2)
    assert "out-of-memory" in describe_exit(-signal.SIGKILL)
    assert "out-of-memory" in describe_exit(137)


def test_run_dirs_are_fresh_and_absolute(tmp_path):
    first = new_run_dir(tmp_path / "runs", "my recipe", now=0)
    assert first.is_absolute() and first.name.startswith("my-recipe-")
    first.mkdir(parents=True)
    assert new_run_dir(tmp_path / "runs", "my recipe", now=0).name == first.name + "-2"


def test_stderr_tail_keeps_the_last_state_of_progress_lines(tmp_path):
    log = tmp_path / "stderr.log"
    log.write_text("one\nbar 10%\rbar 50%\rbar 100%\nlast\n")
    assert tail(log, 2) == "bar 100%\nlast"
    assert tail(tmp_path / "missing.log") == ""


def test_long_curves_are_thinned_but_keep_their_last_point():
    xs = list(range(10_000))
    tx, ty = thin(xs, xs, limit=500)
    assert len(tx) <= 501 and tx[-1] == 9_999 and tx[0] == 0


def test_the_runs_list_rereads_only_runs_that_changed(tmp_path):
    from pefttool.events import EventLog, LogEvent
    from pefttool.runfolder.summary import list_runs as scan_runs
    from test_tui_support import write_canned_run

    done = write_canned_run(tmp_path, "done-1")
    cache: dict = {}
    first = scan_runs(tmp_path, cache)
    assert [r.status for r in first] == ["completed"]
    assert scan_runs(tmp_path, cache)[0] is first[0]          # unchanged: not reread
    log = EventLog(done)
    log.write(LogEvent(level="info", message="appended"))
    log.close()
    assert scan_runs(tmp_path, cache)[0] is not first[0]      # changed: reread
    assert scan_runs(tmp_path / "missing", {}) == []


def test_a_line_that_is_not_an_event_is_skipped_and_counted_and_hides_no_run(tmp_path):
    from pefttool.runfolder.summary import list_runs
    from test_tui_support import write_canned_run

    bad = write_canned_run(tmp_path, "bad-1")
    write_canned_run(tmp_path, "good-1", t0=1_735_800_000.0)
    with open(bad / "events.jsonl", "a") as fh:
        fh.write("[1, 2]\n{\"type\": \"step\"}\nnot json\n")
    runs = {r.path.name: r for r in list_runs(tmp_path)}
    assert runs["bad-1"].status == "completed" and runs["bad-1"].bad_lines == 3
    assert runs["good-1"].status == "completed" and runs["good-1"].bad_lines == 0


def test_the_baseline_is_before_never_best_and_a_resume_continues_the_run(tmp_path):
    from pefttool.events import EndEvent, StartEvent, StepEvent
    from pefttool.runfolder.summary import RunState
    from test_tui_support import canned_events

    events = canned_events(tmp_path, upto=10, pid=999_999_999)
    state = RunState(tmp_path)
    state.apply(events)
    assert state.before == 0.49 and state.best is None        # only the baseline so far
    state.apply([EndEvent(status="interrupted", step=10, duration_s=20.0, time=events[-1].time + 1)])
    assert state.status == "interrupted"
    start = events[0]
    resumed = StartEvent(**{**vars(start), "resumed_from_step": 10, "pid": os.getpid(),
                            "time": start.time + 1000})
    state.apply([resumed])
    assert state.status == "running" and state.end is None      # a start after an end: continues
    state.apply([StepEvent(step=12, total_steps=60, epoch=0.6, loss=0.5, lr=1e-3, tokens_per_s=1000.0,
                           samples_per_s=1.0, elapsed_s=18.0, eta_s=1.0, rss_mb=1.0,
                           time=start.time + 1010),
                 EndEvent(status="completed", step=12, duration_s=7.0, time=start.time + 1011)])
    assert state.duration_s == 27.0            # both segments, not the gap, not the last only
    assert state.step == 12 and state.segments == 2
