"""Never lose a run: a run killed at any moment (SIGKILL mid-epoch, or in the middle of writing
a checkpoint) resumes from its last complete checkpoint and ends exactly where an
uninterrupted run of the same recipe ends: same metrics, same weights (CPU, fixed seed).

Every run here is a real `python -m pefttool.cli` child process, killed for real.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

import pefttool
from fault_helpers import (checkpoint_names, events_of, finish, leftovers, max_abs_diff, metrics_of,
                           of_type, run_pefttool, start_pefttool, tensors, tree, wait_for_events)
from pefttool.runfolder.checkpoints import TrainState, list_checkpoints
from pefttool.cli import main
from pefttool.engine import run_recipe
from pefttool.errors import PefttoolError
from pefttool.plugins import get_plugin_host
from pefttool.recipe import load_recipe
from tiny_models import write_tiny_recipe

# 48 training rows, batch 4: 12 optimizer steps per epoch, 24 in all. Interval checkpoints
# every 5 steps fall mid-epoch (5, 10, 15, 20); epoch ends checkpoint too (12, 24).
# The base BERT's own dropout (0.1) is on, so resuming must restore the RNG exactly too.
RECIPE = {"train.epochs": 2, "train.batch_size": 4, "train.lr": 3e-3, "train.checkpoint_every": 5,
          "train.keep_checkpoints": 2, "eval.before_training": False}
STEPS_PER_EPOCH, TOTAL = 12, 24


def make_recipe(folder: Path, model_dir: Path) -> Path:
    return write_tiny_recipe(folder, model_dir, "lora", overrides=RECIPE)


def run_dir_of(folder: Path) -> Path:
    return folder / "runs" / "recipe"


class Reference:
    """An uninterrupted run of RECIPE, started once per module in the background."""

    def __init__(self, folder: Path, model_dir: Path):
        self.folder = folder
        self.proc = start_pefttool("run", make_recipe(folder, model_dir), cwd=folder)
        self._done: tuple[int, str, str] | None = None

    def result(self) -> Path:
        if self._done is None:
            self._done = finish(self.proc, timeout=300)
        rc, out, err = self._done
        assert rc == 0, err
        return run_dir_of(self.folder)

    @property
    def stdout(self) -> str:
        self.result()
        return self._done[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_classifier_dir):
    ref = Reference(tmp_path_factory.mktemp("reference"), tiny_classifier_dir)
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.wait()


def assert_same_outcome(resumed: Path, uninterrupted: Path) -> tuple[float, float]:
    """Same metrics, same best model, same final weights. Returns the max weight differences
    (best model, final checkpoint)."""
    got, want = metrics_of(resumed), metrics_of(uninterrupted)
    assert got["status"] == want["status"] == "completed"
    assert got["steps"] == want["steps"] == TOTAL
    assert got["best_step"] == want["best_step"]
    assert got["best"] == pytest.approx(want["best"], abs=1e-6)
    assert got["best_metrics"] == pytest.approx(want["best_metrics"], abs=1e-6)
    assert [h["step"] for h in got["history"]] == [h["step"] for h in want["history"]]
    for a, b in zip(got["history"], want["history"]):
        assert a == pytest.approx(b, abs=1e-6)
    model_diff = max_abs_diff(tensors(resumed / "model" / "adapter_model.safetensors"),
                              tensors(uninterrupted / "model" / "adapter_model.safetensors"))
    final = f"checkpoints/step-{TOTAL:07d}/model.safetensors"
    final_diff = max_abs_diff(tensors(resumed / final), tensors(uninterrupted / final))
    assert model_diff <= 1e-6 and final_diff <= 1e-6, (model_diff, final_diff)
    # The steps trained after the resume had the very same losses as the uninterrupted ones.
    want_loss = {e.step: e.loss for e in of_type(events_of(uninterrupted), "step")}
    after = [e for e in of_type(events_of(resumed), "step")]
    for e in after:
        assert e.loss == pytest.approx(want_loss[e.step], abs=1e-5), e.step
    return model_diff, final_diff


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_classifier_dir,
                                                                   reference):
    recipe = make_recipe(tmp_path, tiny_classifier_dir)
    run_dir = run_dir_of(tmp_path)
    proc = start_pefttool("run", recipe, cwd=tmp_path)

    # Wait for the mid-epoch checkpoint at step 15 (epoch 2, batch 3) and two more steps.
    def ready(events):
        return (any(e.type == "checkpoint" and e.step == 15 for e in events)
                and any(e.type == "step" and e.step >= 17 for e in events))

    seen = wait_for_events(proc, run_dir, ready)
    proc.send_signal(signal.SIGKILL)
    rc, _, _ = finish(proc)
    assert rc == -signal.SIGKILL
    last_step = max(e.step for e in of_type(seen, "step"))
    assert last_step < 20, "killed too late: the next checkpoint is already written"
    assert not of_type(events_of(run_dir), "end"), "a SIGKILLed run cannot have said goodbye"
    newest = list_checkpoints(run_dir)[-1]
    state = TrainState.from_file(newest / "trainer_state.json")
    assert (state.global_step, state.epoch, state.batches_done) == (15, 1, 3)  # mid-epoch
    # Accelerate's state (weights, optimizer, scheduler, RNG) + the loop's own state.
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
            "trainer_state.json"} <= {p.name for p in newest.iterdir()}
    assert state.history and state.best is not None  # the epoch-1 evaluation and best metric
    assert checkpoint_names(run_dir)[-2:] == ["step-0000012", "step-0000015"]  # last K = 2

    resumed = run_pefttool("resume", run_dir, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert "resumed at step 15" in resumed.stdout
    assert "resumed from step-0000015 (step 15, epoch 2, batch 3)" in resumed.stdout
    starts = of_type(events_of(run_dir), "start")
    assert [s.resumed_from_step for s in starts] == [0, 15]
    assert of_type(events_of(run_dir), "end")[-1].status == "completed"

    model_diff, final_diff = assert_same_outcome(run_dir, reference.result())
    print(f"\nSIGKILL at step {last_step}, resumed from step 15: best accuracy "
          f"{metrics_of(run_dir)['best']} vs {metrics_of(reference.result())['best']} "
          f"(uninterrupted); max |Δw| best model {model_diff:.3g}, final weights {final_diff:.3g}")
    # Keep the last K (2) checkpoints plus the best one.
    best = metrics_of(run_dir)["best_step"]
    expected = sorted({"step-0000020", "step-0000024", f"step-{best:07d}"})
    assert checkpoint_names(run_dir) == expected
    assert leftovers(run_dir) == []


# A child that is SIGKILLed in the middle of writing the checkpoint of step 10: the tensors
# are half on disk (model.safetensors truncated, optimizer.bin not yet written) and
# trainer_state.json is not, exactly as if the power went out.
KILL_IN_CHECKPOINT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import accelerate

    original = accelerate.Accelerator.save_state

    def save_state(self, output_dir=None, *args, **kwargs):
        result = original(self, output_dir, *args, **kwargs)
        out = Path(output_dir)
        if out.name.startswith(".tmp-step-0000010"):
            weights = out / "model.safetensors"
            data = weights.read_bytes()
            weights.write_bytes(data[: len(data) // 2])
            (out / "optimizer.bin").unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    accelerate.Accelerator.save_state = save_state
    from pefttool.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(capsys, tmp_path,
                                                                         tiny_classifier_dir, reference):
    recipe = make_recipe(tmp_path, tiny_classifier_dir)
    run_dir = run_dir_of(tmp_path)
    killed = run_pefttool("run", recipe, cwd=tmp_path, python_code=KILL_IN_CHECKPOINT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    names = checkpoint_names(run_dir)
    stale = [n for n in names if n.startswith(".tmp-step-0000010-")]
    assert len(stale) == 1, names  # the half-written checkpoint, never renamed into place
    assert not (run_dir / "checkpoints" / stale[0] / "trainer_state.json").exists()
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-0000005"]  # the intact previous one
    previous = run_dir / "checkpoints" / "step-0000005"
    assert TrainState.from_file(previous / "trainer_state.json").global_step == 5
    tensors(previous / "model.safetensors")  # loads: complete

    # `pefttool run RECIPE --resume` finds the newest unfinished run of the recipe (run in
    # this process: the other test resumes in a child).
    assert main(["run", str(recipe), "--resume"]) == 0
    resumed = capsys.readouterr()
    assert "Traceback" not in resumed.err
    assert "resumed from step-0000005 (step 5, epoch 1, batch 5)" in resumed.out
    assert not any(n.startswith(".tmp-step-") for n in checkpoint_names(run_dir)), \
        "the stale temporary checkpoint was not cleaned up"
    assert leftovers(run_dir) == []
    model_diff, final_diff = assert_same_outcome(run_dir, reference.result())
    print(f"\nkilled while writing step 10, resumed from step 5: max |Δw| best model "
          f"{model_diff:.3g}, final weights {final_diff:.3g}")


def test_the_start_of_a_run_shows_its_safety_choices(reference):
    # The headless output names how weights are loaded, before any training.
    line = next(l for l in reference.stdout.splitlines() if l.startswith("safety:"))
    assert "weights safetensors" in line
    assert "allow_pickle=false" in line and "trust_remote_code=false" in line
    start = of_type(events_of(reference.result()), "start")[0]
    assert start.safety["allow_pickle"] is False and start.safety["trust_remote_code"] is False


def test_resuming_a_finished_run_or_a_folder_without_a_run_is_one_line(tmp_path, reference):
    done = run_pefttool("resume", reference.result(), cwd=tmp_path)
    assert done.returncode == 2 and "already finished (completed)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_pefttool("resume", empty, cwd=tmp_path)
    assert nothing.returncode == 2 and "is not a pefttool run" in nothing.stderr
    assert len(nothing.stderr.strip().splitlines()) == 1 and "Traceback" not in nothing.stderr
    assert list(empty.iterdir()) == []


class _TermAtStep2:
    """Sends this very process a SIGTERM at step 2, as `kill PID` from outside would."""

    @pefttool.hookimpl
    def pefttool_step_end(self, event):
        if event.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def test_run_resume_takes_the_newest_unfinished_run_and_repairs_a_half_replaced_model(
        capsys, tmp_path, tiny_classifier_dir):
    # Runs get a folder per start time; lr is tiny so no evaluation improves on the first one
    # (step 1) and the model saved at step 1 stays the result.
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "train.epochs": 1, "train.lr": 1e-9, "eval.every_steps": 1,
        "output.dir": str(tmp_path / "runs" / "{name}-{time}")})
    host = get_plugin_host()
    host.register(_TermAtStep2(), "term-at-step-2")
    try:
        assert main(["run", str(recipe)]) == 143
    finally:
        host.unregister("term-at-step-2")
    (interrupted,) = (tmp_path / "runs").iterdir()
    saved = tree(interrupted / "model")
    time.sleep(1.1)  # the next run gets another {time}
    assert main(["run", str(recipe)]) == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2
    capsys.readouterr()

    # A kill while model/ was being replaced: the old one moved aside, the new one half written.
    os.replace(interrupted / "model", interrupted / ".model-old")
    (interrupted / ".model-tmp").mkdir()
    (interrupted / ".model-tmp" / "adapter_model.safetensors").write_bytes(b"half")

    assert main(["run", str(recipe), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"run {interrupted}" in out and "resumed at step 2" in out
    assert metrics_of(interrupted)["status"] == "completed"
    assert tree(interrupted / "model") == saved, "the model moved aside was not put back"
    assert leftovers(interrupted) == []

    assert main(["run", str(recipe), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "already finished" in err and "without --resume" in err and len(err.splitlines()) == 1


class _CrashAt:
    """Stands in for a crash: an observer that raises at a given step (the run fails there)."""

    def __init__(self, step: int):
        self.step = step

    @pefttool.hookimpl
    def pefttool_step_end(self, event):
        if event.step == self.step:
            raise RuntimeError("simulated crash")


VARIANTS = {
    # gradient accumulation (checkpoints between optimizer steps' micro-batches), step-based
    # evaluation with early-stopping state, warm-up + cosine schedule
    "accumulation+step-eval": ("classification", "lora", 5, {
        "train.grad_accum": 3, "train.checkpoint_every": 2, "eval.every_steps": 3,
        "early_stopping.enabled": True, "early_stopping.patience": 10, "train.warmup_ratio": 0.2,
        "train.scheduler": "cosine"}),
    # instruction tuning with LoRA dropout on, greedy-generation metric, tied embeddings
    "causal-lm+dropout": ("causal-lm", "lora", 8, {
        "train.checkpoint_every": 5, "eval.metric": "exact_match", "method.dropout": 0.1}),
    # batches grouped by length (data.group_by_length): the same groups after a resume
    "group_by_length": ("classification", "lora", 5, {
        "data.group_by_length": True, "train.checkpoint_every": 2, "train.batch_size": 4}),
    # packed rows (data.packing): the same rows, in the same order, after a resume
    "packing": ("causal-lm", "lora", 5, {
        "data.packing": True, "train.checkpoint_every": 2, "train.batch_size": 2,
        "method.dropout": 0.1}),
    # full fine-tune with weight decay, cut short by max_steps
    "full+max_steps": ("classification", "full", 17, {
        "train.checkpoint_every": 5, "train.max_steps": 20, "train.weight_decay": 0.01}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_is_exact_for_other_set_ups(variant, tmp_path, request):
    task, strategy, crash_at, overrides = VARIANTS[variant]
    model_dir = request.getfixturevalue("tiny_classifier_dir" if task == "classification"
                                        else "tiny_causal_dir")
    overrides = {"train.epochs": 2, "train.batch_size": 4, **overrides}
    straight = load_recipe(write_tiny_recipe(tmp_path / "a", model_dir, strategy, task, overrides=overrides))
    broken = load_recipe(write_tiny_recipe(tmp_path / "b", model_dir, strategy, task, overrides=overrides))
    want = run_recipe(straight)
    with pytest.raises(PefttoolError, match="simulated crash"):
        run_recipe(broken, observers=(_CrashAt(crash_at),))
    run_dir = tmp_path / "b" / "runs" / "recipe"
    resumed_from = TrainState.from_file(list_checkpoints(run_dir)[-1] / "trainer_state.json")
    # A plugin failing mid-run checkpoints first (the step it failed at), so that is the newest.
    assert 0 < resumed_from.global_step <= crash_at
    got = run_recipe(broken, resume=True, run_dir=run_dir)

    assert (got.status, got.steps, got.best, got.best_step) == (want.status, want.steps, want.best,
                                                                want.best_step)
    a, b = metrics_of(want.run_dir), metrics_of(run_dir)
    assert len(a["history"]) == len(b["history"])
    for x, y in zip(a["history"], b["history"]):
        assert x == pytest.approx(y, abs=1e-6)
    weights = sorted(p.name for p in (want.run_dir / "model").glob("*.safetensors"))
    assert weights
    for name in weights:
        diff = max_abs_diff(tensors(want.run_dir / "model" / name), tensors(run_dir / "model" / name))
        assert diff <= 1e-6, (name, diff)
