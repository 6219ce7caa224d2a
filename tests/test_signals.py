"""SIGINT, SIGTERM and SIGHUP (an SSH disconnect) stop a run cleanly: the current step
finishes, a checkpoint is written, events.jsonl records the stop (end status "interrupted"),
and the process exits with 128 + the signal's number. A second SIGINT aborts at once.
An interrupted run resumes to completion.

Each run is a real `python -m pefttool.cli run` child, signalled once its first step is done.
"""

from __future__ import annotations

import signal
import textwrap
import time

import pytest

from fault_helpers import (SIGNAL_EXIT, checkpoint_names, events_of, finish, leftovers, metrics_of,
                           of_type, start_pefttool, wait_for_events)
from pefttool.cli import main
from pefttool.events import EventFollower
from pefttool.runfolder.checkpoints import TrainState, list_checkpoints
from tiny_models import write_tiny_recipe

# 12 steps per epoch × 2 epochs: far more than can run between the first step and the signal.
RECIPE = {"train.epochs": 2, "train.batch_size": 4, "eval.before_training": False}
TOTAL = 24


def first_step_done(events) -> bool:
    return any(e.type == "step" for e in events)


SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_classifier_dir):
    """One child per signal, started together (they are independent): each gets its signal
    once its first step is done. signum → (exit code, stdout, stderr, run dir, time sent)."""
    children = {}
    for signum in SIGNALS:
        folder = tmp_path_factory.mktemp(signal.Signals(signum).name)
        recipe = write_tiny_recipe(folder, tiny_classifier_dir, "lora", overrides=RECIPE)
        children[signum] = (folder, start_pefttool("run", recipe, cwd=folder))
    followers = {signum: EventFollower(folder / "runs" / "recipe" / "events.jsonl")
                 for signum, (folder, _) in children.items()}
    sent: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 180
        while len(sent) < len(children) and time.monotonic() < deadline:
            for signum, (folder, proc) in children.items():
                if signum in sent:
                    continue
                if any(e.type == "step" for e in followers[signum].poll()):
                    proc.send_signal(signum)
                    sent[signum] = time.time()
                elif proc.poll() is not None:
                    raise AssertionError(f"{signum!r}: the run ended before its first step\n"
                                         f"{proc.communicate()}")
            time.sleep(0.005)
        assert len(sent) == len(children), "timed out waiting for the first steps"
        return {signum: (*finish(proc), folder / "runs" / "recipe", sent[signum])
                for signum, (folder, proc) in children.items()}
    finally:
        for _, proc in children.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signal_finishes_the_step_checkpoints_and_exits_with_its_code(signum, interrupted, capsys):
    rc, out, err, run_dir, sent = interrupted[signum]

    assert rc == SIGNAL_EXIT[signum] == 128 + signum, err
    assert "Traceback" not in err and err.strip() == "", err
    events = events_of(run_dir)
    end = events[-1]
    assert end.type == "end" and end.status == "interrupted"
    assert end.exit_code == rc
    assert signal.Signals(signum).name in end.message and f"pefttool resume {run_dir}" in end.message
    stop = [e for e in of_type(events, "checkpoint") if e.reason == "stop"]
    assert len(stop) == 1 and stop[0].step == end.step < TOTAL
    last_step = max(e.step for e in of_type(events, "step"))
    assert last_step == end.step  # the step in progress finished; no other one started
    newest = list_checkpoints(run_dir)[-1]
    assert newest.name == f"step-{end.step:07d}"
    assert TrainState.from_file(newest / "trainer_state.json").global_step == end.step
    assert metrics_of(run_dir)["status"] == "interrupted"
    assert f"checkpoint saved at step {end.step}" in out
    assert f"pefttool resume {run_dir}" in out
    assert leftovers(run_dir) == []
    print(f"\n{signal.Signals(signum).name}: stopped after step {end.step} of {TOTAL}, end event "
          f"{end.time - sent:.2f}s after the signal, exit {rc}")

    if signum == signal.SIGHUP:
        # The SSH session is gone; the run continues from its checkpoint to the end.
        # (`pefttool resume` in this process: the children above already showed the CLI.)
        assert main(["resume", str(run_dir)]) == 0
        resumed = capsys.readouterr()
        assert "Traceback" not in resumed.err
        assert f"resumed at step {end.step}" in resumed.out
        assert f"completed after {TOTAL} steps" in resumed.out
        final = events_of(run_dir)[-1]
        assert final.type == "end" and final.status == "completed" and final.step == TOTAL
        assert metrics_of(run_dir)["steps"] == TOTAL
        steps = [e.step for e in of_type(events_of(run_dir), "step")]
        assert steps == list(range(1, TOTAL + 1)), "every step ran exactly once"
        assert (run_dir / "model" / "adapter_model.safetensors").is_file()


# A child whose observer is slow at the first step, so that two SIGINTs 0.2 s apart both land
# while that step is being reported: the second must abort at once, without a checkpoint.
SLOW_FIRST_STEP = textwrap.dedent("""
    import sys, time
    import pefttool
    from pefttool.plugins import get_plugin_host

    class SlowFirstStep:
        @pefttool.hookimpl
        def pefttool_step_end(self, event):
            if event.step == 1:
                time.sleep(3)

    get_plugin_host().register(SlowFirstStep(), "slow-first-step")
    from pefttool.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_second_sigint_aborts_at_once(tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides=RECIPE)
    run_dir = tmp_path / "runs" / "recipe"
    proc = start_pefttool("run", recipe, cwd=tmp_path, python_code=SLOW_FIRST_STEP)
    wait_for_events(proc, run_dir, first_step_done)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    rc, out, err = finish(proc)

    assert rc == 130
    assert "Traceback" not in err and err.strip() == "interrupted", err
    events = events_of(run_dir)
    end = events[-1]
    aborted_in = end.time - sent  # the slow step would have gone on for ~2.8 s more
    assert aborted_in < 1.5, f"took {aborted_in:.1f}s: it waited for the slow step to end"
    assert end.type == "end" and end.status == "interrupted" and end.exit_code == 130
    assert "second interrupt" in end.message
    assert of_type(events, "checkpoint") == []  # aborted: no stop checkpoint was written
    assert max(e.step for e in of_type(events, "step")) == 1
    assert not any(n.startswith(".tmp-step-") for n in checkpoint_names(run_dir))
    assert leftovers(run_dir) == []
    print(f"\nsecond SIGINT: aborted in {aborted_in:.2f}s, exit {rc}")
