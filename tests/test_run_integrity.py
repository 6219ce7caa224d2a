"""A run directory is never clobbered, never written by two processes, and resumed only as the
run it was: overwrite, locking, resume checks, damaged checkpoints, stops during set-up.

Interrupted runs are made in this process: an observer sends SIGINT to the process after a
given step, and the engine stops there with a checkpoint (as after Ctrl-C).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pefttool
from fault_helpers import events_of, metrics_of, of_type, start_pefttool, tree
from pefttool.runfolder.checkpoints import STATE_FILE, list_checkpoints
from pefttool.engine import run_recipe
from pefttool.errors import DataError, OutputError, RecipeError
from pefttool.recipe import load_recipe
from pefttool.runfolder.rundir import ExitCode, RunDir, RunStatus, claim_new
from test_faults import assert_clean_failure, cli
from tiny_models import write_tiny_recipe


class StopAfter:
    """An observer that asks the run to stop (SIGINT to this process) after step `step`."""

    def __init__(self, step: int):
        self.step = step

    @pefttool.hookimpl
    def pefttool_step_end(self, event):
        if event.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def interrupted_run(tmp_path: Path, model_dir: Path, step: int = 6, **overrides) -> tuple[Path, Path]:
    """(recipe path, run dir) of a run stopped by SIGINT after `step`, checkpoints every 2."""
    recipe = write_tiny_recipe(tmp_path, model_dir, "lora", overrides={
        "train.checkpoint_every": 2, "train.keep_checkpoints": 3, "train.epochs": 3, **overrides})
    result = run_recipe(load_recipe(recipe), observers=(StopAfter(step),))
    assert result.status == RunStatus.INTERRUPTED and result.exit_code == 130
    return recipe, result.run_dir


# ================================================================ overwrite and the output folder


def test_overwrite_refuses_a_folder_that_is_not_a_run(capsys, tmp_path, tiny_classifier_dir):
    user = tmp_path / "userproj"
    (user / "model").mkdir(parents=True)
    (user / "checkpoints").mkdir()
    (user / "model" / "weights.txt").write_text("x")
    (user / "checkpoints" / "notes.txt").write_text("k")
    (user / "metrics.json").write_text('{"mine":1}')
    before = tree(user)
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"output.dir": str(user), "output.overwrite": True})
    rc, out, err = cli(capsys, "run", recipe)
    lines = assert_clean_failure(rc, out, err, "already holds files that are not a pefttool run",
                                 "choose another output.dir")
    assert "output.overwrite" not in lines[0] and "resume" not in lines[0]
    assert tree(user) == before


def test_overwrite_replaces_a_previous_run_and_keeps_the_users_own_files(tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"train.max_steps": 2, "output.overwrite": True})
    first = run_recipe(load_recipe(recipe))
    (first.run_dir / "my-notes.txt").write_text("keep me")
    second = run_recipe(load_recipe(recipe))
    assert second.run_dir == first.run_dir and second.status == RunStatus.COMPLETED
    assert (first.run_dir / "my-notes.txt").read_text() == "keep me"
    starts = of_type(events_of(second.run_dir), "start")
    assert len(starts) == 1, "the first run's events were not cleared"
    assert any("output.overwrite: replaced the previous run" in e.message
               for e in of_type(events_of(second.run_dir), "log"))


def test_a_previous_run_without_overwrite_offers_resume(capsys, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={"train.max_steps": 2})
    run_dir = run_recipe(load_recipe(recipe)).run_dir
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "holds a previous run", f"pefttool resume {run_dir}",
                         "output.overwrite = true")


def test_two_runs_in_the_same_second_get_distinct_folders(tmp_path):
    base = tmp_path / "runs" / "r-20260101-000000"
    a, _ = claim_new(base, overwrite=False, templated_time=True)
    b, _ = claim_new(base, overwrite=False, templated_time=True)
    try:
        assert a.path == base and b.path == base.with_name(base.name + "-2")
    finally:
        a.release()
        b.release()


@pytest.mark.parametrize("override,needle", [
    ({"name": "../../escape"}, "name: a recipe name holds letters, digits"),
    ({"output.dir": "runs/{nope}"}, "output.dir: '{nope}' is not a placeholder"),
])
def test_a_name_or_template_that_would_move_the_run_is_a_recipe_problem(capsys, tmp_path,
                                                                       tiny_classifier_dir,
                                                                       override, needle):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides=override)
    rc, out, err = cli(capsys, "validate", recipe)
    assert_clean_failure(rc, out, err, needle)
    assert not (tmp_path.parent / "escape").exists()


def test_a_failed_set_up_does_not_block_running_the_same_command_again(capsys, tmp_path,
                                                                       tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"data.text_column": "nope", "train.max_steps": 2})
    rc, out, err = cli(capsys, "run", recipe)
    assert rc == 2 and "no column 'nope'" in err
    fixed = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={"train.max_steps": 2})
    assert fixed == recipe  # the same file, fixed
    rc, out, err = cli(capsys, "run", recipe)
    assert rc == 0, err
    assert "which ended before it saved a checkpoint or a model" in out


def test_a_run_failing_in_its_first_step_does_not_block_running_again(capsys, tmp_path, tiny_classifier_dir):
    """Issue 29, item 6: a plugin failing in step 1 left a run that blocked a rerun into the
    same output.dir ('holds a previous run; resume it…') with nothing in it to resume."""
    from pefttool.plugins import get_plugin_host
    from pefttool_lora import LoraStrategy

    class FailingLoss(LoraStrategy):
        name = "failing-loss"

        def compute_loss(self, outputs, batch, recipe, options):
            raise RuntimeError("the author's bug")

    class Plugin:
        @pefttool.hookimpl
        def pefttool_register_strategies(self, register):
            register(FailingLoss())

    host = get_plugin_host()
    host.register(Plugin(), name="failing-loss-plugin")
    try:
        recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "failing-loss",
                                   overrides={"train.max_steps": 2, "eval.before_training": False})
        rc, out, err = cli(capsys, "run", recipe)
        assert rc == 3 and "the author's bug" in err
    finally:
        host.unregister("failing-loss-plugin")
    run_dir = tmp_path / "runs" / "recipe"
    assert not list_checkpoints(run_dir) and not (run_dir / "model").exists()
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"train.max_steps": 2, "eval.before_training": False})
    rc, out, err = cli(capsys, "run", recipe)
    assert rc == 0, err
    assert "which ended before it saved a checkpoint or a model" in out


# ================================================================ one writer


def test_a_second_writer_is_refused_naming_the_live_pid(capsys, tmp_path, tiny_classifier_dir):
    _, run_dir = interrupted_run(tmp_path, tiny_classifier_dir)
    holder = RunDir(run_dir)
    assert holder.acquire() is None
    try:
        rc, out, err = cli(capsys, "resume", run_dir)
        assert_clean_failure(rc, out, err, f"being written by another pefttool (pid {os.getpid()}")
    finally:
        holder.release()
    n_starts = len(of_type(events_of(run_dir), "start"))
    assert n_starts == 1, "the refused resume wrote into the run"


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_line(capsys, tmp_path, tiny_classifier_dir):
    _, run_dir = interrupted_run(tmp_path, tiny_classifier_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (run_dir / ".lock").write_text(json.dumps({"pid": int(dead), "host": "gone"}))
    rc, out, err = cli(capsys, "resume", run_dir)
    assert rc == 0, err
    assert f"took over the lock of pid {dead} on gone" in out
    assert not (run_dir / ".lock").exists()


# ================================================================ resume is the run it was


def test_resume_with_a_changed_recipe_lists_the_differences(capsys, tmp_path, tiny_classifier_dir):
    recipe, run_dir = interrupted_run(tmp_path, tiny_classifier_dir)
    rc, out, err = cli(capsys, "run", recipe, "--resume", "--set", "method.r=8", "--set",
                       "train.batch_size=4")
    assert_clean_failure(rc, out, err, "started with another recipe", "method.r: 4 → 8",
                         "train.batch_size: 8 → 4")
    # Editing the saved recipe.toml is caught too: the marker keeps the recipe it began with.
    text = (run_dir / "recipe.toml").read_text().replace("batch_size = 8", "batch_size = 4")
    (run_dir / "recipe.toml").write_text(text)
    rc, out, err = cli(capsys, "resume", run_dir)
    assert_clean_failure(rc, out, err, "train.batch_size: 8 → 4")


def test_resume_may_change_harmless_keys(capsys, tmp_path, tiny_classifier_dir):
    recipe, run_dir = interrupted_run(tmp_path, tiny_classifier_dir)
    rc, out, err = cli(capsys, "run", recipe, "--resume", "--set", "train.log_every=3",
                       "--set", "train.keep_checkpoints=1")
    assert rc == 0, err
    assert metrics_of(run_dir)["status"] == RunStatus.COMPLETED


def test_resume_with_no_checkpoint_left_says_so(capsys, tmp_path, tiny_classifier_dir):
    import shutil

    _, run_dir = interrupted_run(tmp_path, tiny_classifier_dir)
    shutil.rmtree(run_dir / "checkpoints")
    rc, out, err = cli(capsys, "resume", run_dir)
    assert_clean_failure(rc, out, err, "has no checkpoint left to resume from",
                         "output.overwrite=true")


def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_that_verifies(capsys, tmp_path,
                                                                             tiny_classifier_dir):
    _, run_dir = interrupted_run(tmp_path, tiny_classifier_dir)
    checkpoints = list_checkpoints(run_dir)
    assert len(checkpoints) >= 2
    newest, older = checkpoints[-1], checkpoints[-2]
    weights = next(newest.glob("*.safetensors"))
    os.truncate(weights, 100)
    rc, out, err = cli(capsys, "resume", run_dir)
    assert rc == 0, err
    assert f"skipped checkpoint {newest.name}: {weights.name} is 100 bytes" in out
    assert f"resumed from {older.name}" in out
    # Every checkpoint damaged: one line, exit 2.
    _, run_dir2 = interrupted_run(tmp_path / "b", tiny_classifier_dir)
    for checkpoint in list_checkpoints(run_dir2):
        (checkpoint / "optimizer.bin").write_bytes(b"tampered")
    rc, out, err = cli(capsys, "resume", run_dir2)
    assert_clean_failure(rc, out, err, "no checkpoint left to resume from",
                         "every checkpoint failed its check")


def test_a_run_folder_whose_own_files_link_outside_it_is_refused(capsys, tmp_path, tiny_classifier_dir):
    _, run_dir = interrupted_run(tmp_path, tiny_classifier_dir)
    outside = tmp_path / "outside.json"
    outside.write_text("the user's own file")
    (run_dir / "metrics.json").unlink()
    (run_dir / "metrics.json").symlink_to(outside)
    rc, out, err = cli(capsys, "resume", run_dir)
    assert_clean_failure(rc, out, err, f"{run_dir / 'metrics.json'} is a symbolic link to {outside}",
                         "outside the run folder", "replace the link")
    assert outside.read_text() == "the user's own file"
    assert not (run_dir / ".lock").exists()
    # a link that stays inside the run folder is not refused: the run replaces it with its file
    (run_dir / "metrics.json").unlink()
    (run_dir / "old-metrics.json").write_text("{}")
    (run_dir / "metrics.json").symlink_to(run_dir / "old-metrics.json")
    rc, out, err = cli(capsys, "resume", run_dir)
    assert rc == 0, err
    assert not (run_dir / "metrics.json").is_symlink()
    assert (run_dir / "old-metrics.json").read_text() == "{}"
    assert outside.read_text() == "the user's own file"


def test_pefttools_own_files_are_written_by_replacing_the_path(tmp_path):
    from pefttool.events import EventLog
    from pefttool.runfolder.rundir import replace_file

    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").symlink_to(outside)
    replace_file(run / "metrics.json", "{}")
    assert not (run / "metrics.json").is_symlink() and (run / "metrics.json").read_text() == "{}"
    (run / ".metrics.json.tmp-{}".format(os.getpid())).symlink_to(outside)  # a planted temporary name
    replace_file(run / "metrics.json", "[]")
    assert (run / "metrics.json").read_text() == "[]"
    (run / "events.jsonl").symlink_to(outside)
    with pytest.raises(OSError):
        EventLog(run)  # appending never follows a link
    assert outside.read_text() == "keep"


def test_checkpoint_pickles_load_with_weights_only(tmp_path, tiny_classifier_dir):
    """Accelerate's optimizer, scheduler and RNG files are pickles: they must load with
    torch's restricted unpickler (no arbitrary code), which is what resume uses."""
    from accelerate.utils.other import load

    _, run_dir = interrupted_run(tmp_path, tiny_classifier_dir)
    pickles = [p for p in list_checkpoints(run_dir)[-1].iterdir() if p.suffix in (".bin", ".pkl")]
    assert pickles
    for path in pickles:
        load(path, weights_only=True)
    state = json.loads((list_checkpoints(run_dir)[-1] / STATE_FILE).read_text())
    assert {Path(p).name for p in state["files"]} >= {p.name for p in pickles}


def test_a_damaged_model_dir_is_rebuilt_from_the_best_checkpoint(capsys, tmp_path, tiny_classifier_dir):
    _, run_dir = interrupted_run(tmp_path, tiny_classifier_dir, step=6,
                                 **{"eval.every_steps": 2, "train.lr": 0.02})
    weights = run_dir / "model" / "adapter_model.safetensors"
    os.truncate(weights, 50)
    rc, out, err = cli(capsys, "resume", run_dir)
    assert rc == 0, err
    assert "model/ was damaged (adapter_model.safetensors is 50 bytes" in out
    from safetensors.torch import load_file

    load_file(str(weights))  # whole again


# ================================================================ stops and small data


def test_sigint_during_set_up_stops_before_the_first_step(capsys, monkeypatch, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    run_dir = tmp_path / "runs" / "recipe"
    proc = start_pefttool("run", recipe, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (run_dir / "events.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if "step 1/" in out:
        pytest.skip("the run reached its first step before the signal (a very fast machine)")
    assert proc.returncode == 130, err
    assert "before the first training step" in err and "Traceback" not in err
    assert not (run_dir / "model").exists() and not list_checkpoints(run_dir)
    (end,) = of_type(events_of(run_dir), "end")
    assert end.status == RunStatus.INTERRUPTED and end.exit_code == 130
    # The same command then runs (the folder of a run that never started is reused); in this
    # process, from the same folder.
    monkeypatch.chdir(tmp_path)
    rc, _, rerun_err = cli(capsys, "run", recipe, "--set", "train.max_steps=1")
    assert rc == 0, rerun_err


def test_sigint_during_the_final_evaluation_completes_then_reports_the_stop(tmp_path,
                                                                            tiny_classifier_dir):
    class StopInFinalEval:
        @pefttool.hookimpl
        def pefttool_eval_end(self, event):
            if event.step == 3:  # the final evaluation has run; its checkpoint is next
                os.kill(os.getpid(), signal.SIGINT)

    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"train.max_steps": 3, "train.log_every": 1})
    result = run_recipe(load_recipe(recipe), observers=(StopInFinalEval(),))
    assert result.status == RunStatus.COMPLETED and result.exit_code == 130
    evals = of_type(events_of(result.run_dir), "eval")
    assert evals[-1].step == 3, "the final evaluation did not finish"
    (end,) = of_type(events_of(result.run_dir), "end")
    assert end.exit_code == 130 and "during the final evaluation" in end.message


def test_tiny_eval_sets_and_labels_without_rows_warn_or_stop_with_strict(tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "train.max_steps": 1, "task.labels": ["negative", "positive", "neutral"],
        "model.reset_head": True})
    result = run_recipe(load_recipe(recipe))
    warnings = [e.message for e in of_type(events_of(result.run_dir), "log") if e.level == "warning"]
    assert any(w.startswith("the eval set has only 16 row(s)") for w in warnings)
    assert any("'neutral' in task.labels have no training rows" in w for w in warnings)
    strict = write_tiny_recipe(tmp_path / "s", tiny_classifier_dir, "lora", overrides={
        "train.max_steps": 1, "data.strict": True})
    with pytest.raises(DataError, match="data.strict: the eval set has only 16 row"):
        run_recipe(load_recipe(strict))


def test_a_continuous_metric_without_early_stopping_gets_no_small_eval_warning(tmp_path, tiny_causal_dir):
    """eval_loss does not move in steps of 1/rows, and nothing stops on it: no warning. With
    early stopping on, the noise of 16 rows matters again."""
    def small_eval_warnings(folder, **extra):
        recipe = write_tiny_recipe(folder, tiny_causal_dir, "lora", "causal-lm", overrides={
            "train.max_steps": 1, "eval.metric": "eval_loss", "eval.before_training": False, **extra})
        result = run_recipe(load_recipe(recipe))
        return [e.message for e in of_type(events_of(result.run_dir), "log")
                if e.level == "warning" and "the eval set has only" in e.message]

    assert small_eval_warnings(tmp_path / "off") == []
    (warning,) = small_eval_warnings(tmp_path / "on", **{"early_stopping.enabled": True})
    assert "eval_loss is noisy on so few rows and early stopping follows noise" in warning


def test_runs_given_a_file_is_bad_input(capsys, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    rc, out, err = cli(capsys, "runs", tmp_path / "f.txt")
    assert_clean_failure(rc, out, err, "is a file; pefttool runs takes the folder")


def test_statuses_and_exit_codes_are_what_events_hold():
    assert json.dumps({"s": RunStatus.EARLY_STOPPED}) == '{"s": "early_stopped"}'
    assert ExitCode.for_signal(signal.SIGTERM) == 143 and int(ExitCode.BAD_INPUT) == 2
    assert RunStatus("completed").finished and not RunStatus.INTERRUPTED.finished


def test_a_lock_taken_on_a_file_its_holder_just_deleted_is_retaken_on_the_new_one(tmp_path, monkeypatch):
    """The holder deletes .lock as it ends; a process that opened the old file just before
    and locks it after would hold a lock on a deleted file while a third process creates and
    locks a new .lock: two writers. The lock must be on the file still at the path."""
    import fcntl

    from pefttool.errors import OutputError
    from pefttool.runfolder.rundir import RunDir

    holder = RunDir(tmp_path / "run")
    holder.path.mkdir()
    holder.acquire()
    real_flock, raced = fcntl.flock, []

    def flock_after_the_holder_ends(fd, op):
        if not raced:  # between our open and our flock, the holder releases
            raced.append(True)
            holder.release()
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_ends)
    second = RunDir(tmp_path / "run")
    second.acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    with pytest.raises(OutputError, match="being written by another pefttool"):
        RunDir(tmp_path / "run").acquire()  # the third must see the second's lock
    second.release()


def test_a_run_stopped_while_loading_is_not_offered_for_resume(tmp_path, tiny_classifier_dir, capsys):
    """Stopped before its first step, a run has no checkpoint: the one answer (resumable.py)
    says so to the CLI and to the TUI alike (the TUI offered `r`, which then failed in
    stderr.log), and pefttool resume says it in one line."""
    from pefttool.cli import main
    from pefttool.errors import PefttoolError
    from pefttool.runfolder.resumable import resumability
    from pefttool.tui.run_actions import can_resume

    class StopWhileLoading:
        @pefttool.hookimpl
        def pefttool_phase(self, event):
            if event.phase == "loading":
                os.kill(os.getpid(), signal.SIGINT)

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora"))
    with pytest.raises(PefttoolError):
        run_recipe(recipe, observers=(StopWhileLoading(),))
    run_dir = tmp_path / "runs" / "recipe"
    answer = resumability(run_dir)
    assert answer.action == "none" and "no checkpoint left" in answer.reason
    assert not can_resume(run_dir)
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint left to resume from" in err and len(err.strip().splitlines()) == 1


class _SignalDuringEpochEval:
    """Sends SIGTERM to this process while the first epoch-end evaluation runs."""

    @pefttool.hookimpl
    def pefttool_eval_end(self, event):
        if not event.before and not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_during_an_epoch_end_evaluation_stops_at_that_epochs_checkpoint(tmp_path, tiny_classifier_dir):
    """Issue 30, item 17: SIGTERM during an epoch-end evaluation trained one more step of the
    next epoch before stopping; it stops at the epoch's checkpoint, and resume finishes."""
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "train.epochs": 3, "eval.before_training": False})
    result = run_recipe(load_recipe(recipe), observers=(_SignalDuringEpochEval(),))
    assert result.status == RunStatus.INTERRUPTED and result.exit_code == 128 + signal.SIGTERM
    events = events_of(result.run_dir)
    epoch_end = of_type(events, "eval")[-1].step
    assert of_type(events, "step")[-1].step == epoch_end == result.steps
    assert [c.name for c in list_checkpoints(result.run_dir)][-1].endswith(f"{epoch_end:07d}")
    resumed = run_recipe(load_recipe(recipe), resume=True)
    assert resumed.status == RunStatus.COMPLETED and resumed.steps == 3 * epoch_end


def test_resume_names_a_checkpoint_that_lost_its_state_file_and_never_blames_the_lock(
        capsys, tmp_path, tiny_classifier_dir):
    """Issue 30, item 15: the newest checkpoint without trainer_state.json was skipped silently;
    with no checkpoint at all, a taken-over lock (a killed run's) was counted as a skipped
    checkpoint ('every checkpoint failed its check')."""
    import shutil

    recipe, run_dir = interrupted_run(tmp_path, tiny_classifier_dir, step=6)
    newest = list_checkpoints(run_dir)[-1]
    (newest / STATE_FILE).unlink()
    stale = {"pid": 2**22 + 12345, "host": "gone", "since": 0}   # a pid no process has
    (run_dir / ".lock").write_text(json.dumps(stale))
    rc, out, err = cli(capsys, "resume", run_dir)
    assert rc == 0, err
    assert f"skipped checkpoint {newest.name}: {STATE_FILE} is missing" in out + err

    recipe, run_dir = interrupted_run(tmp_path / "again", tiny_classifier_dir, step=6)
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / ".lock").write_text(json.dumps(stale))
    rc, out, err = cli(capsys, "resume", run_dir)
    assert rc == 2 and "every checkpoint failed" not in err


class _TwoInterrupts:
    """Ctrl-C twice after step 3 (the second aborts at once, as KeyboardInterrupt)."""

    @pefttool.hookimpl
    def pefttool_step_end(self, event):
        if event.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


def test_an_aborted_run_keeps_its_best_in_the_end_event(tmp_path, tiny_classifier_dir):
    """Issue 30, item 15: after a double Ctrl-C the end event had best and model_dir null
    though step 2 was evaluated and model/ saved."""
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "eval.every_steps": 2, "train.epochs": 3, "eval.before_training": False, "train.log_every": 1})
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe), observers=(_TwoInterrupts(),))
    run_dir = tmp_path / "runs" / "recipe"
    events = events_of(run_dir)
    evaluated = of_type(events, "eval")[-1]
    end = of_type(events, "end")[-1]
    assert end.status == "interrupted" and end.step == 3
    assert (end.metric, end.best, end.best_step) == ("accuracy", evaluated.value, 2)
    assert end.model_dir == str(run_dir / "model") and (run_dir / "model").is_dir()
