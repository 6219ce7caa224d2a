"""Every built-in strategy resumes exactly, however the run was interrupted.

The matrix: full, LoRA and QLoRA (and QLoRA on a causal LM) × a SIGINT mid-epoch, a SIGTERM at
an epoch's last step, and a kill -9 (the run dies between two checkpoints, so resume starts
from the older one, mid-epoch). Each resumed run must end where an uninterrupted run of the
same recipe ends: the same step losses, evaluations and final weights. The runs are in-process
(real signals to this process; a kill -9 leaves on disk exactly what a crash after the last
checkpoint leaves, which is what resume reads); `test_resume.py` kills real child processes.

And what a checkpoint holds: with frozen parameters (LoRA, QLoRA) only what trains, plus a
fingerprint of the base that resume checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from safetensors import safe_open

import pefttool
from fault_helpers import events_of, max_abs_diff, metrics_of, of_type, tensors
from pefttool.runfolder.checkpoints import TrainState, list_checkpoints
from pefttool.engine import run_recipe
from pefttool.errors import PefttoolError
from pefttool.recipe import load_recipe
from tiny_models import write_tiny_recipe

# 48 training rows, batch 8: 6 steps an epoch, 12 in all; a checkpoint every 2 steps. The tiny
# BERT's dropout (0.1) is on, so the RNG must be restored exactly too.
OVERRIDES = {"train.epochs": 2, "train.batch_size": 8, "train.checkpoint_every": 2,
             "train.keep_checkpoints": 10, "eval.before_training": False}
STEPS_PER_EPOCH, TOTAL = 6, 12
SETUPS = {"full": ("classification", "full"), "lora": ("classification", "lora"),
          "qlora": ("classification", "qlora"), "qlora-causal": ("causal-lm", "qlora")}
STOPS = {
    "SIGINT mid-epoch": (signal.SIGINT, 3),
    "SIGTERM at an epoch's end": (signal.SIGTERM, STEPS_PER_EPOCH),
    "kill -9 mid-epoch": (None, 9),
}


class SignalAfter:
    """Sends `signum` to this process after step `step` (as a user's Ctrl-C or kill would)."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step

    @pefttool.hookimpl
    def pefttool_step_end(self, event):
        if event.step == self.step:
            os.kill(os.getpid(), self.signum)


class DieAfter:
    """The run dies after `step`: what is on disk then is everything up to the last checkpoint
    before it (the crash's own checkpoint is removed below, as a kill -9 never writes one)."""

    def __init__(self, step: int):
        self.step = step

    @pefttool.hookimpl
    def pefttool_step_end(self, event):
        if event.step == self.step:
            raise RuntimeError("killed")


def _recipe(folder: Path, model_dir: Path, task: str, strategy: str, **extra) -> Path:
    overrides = dict(OVERRIDES, **extra)
    if task == "causal-lm":
        overrides["method.dropout"] = 0.1  # the LoRA dropout draws from the RNG too
    return write_tiny_recipe(folder, model_dir, strategy, task, overrides=overrides)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, request):
    """One uninterrupted run per set-up, shared by that set-up's cases."""
    done: dict[str, Path] = {}

    def get(setup: str) -> Path:
        if setup not in done:
            task, strategy = SETUPS[setup]
            model_dir = request.getfixturevalue("tiny_classifier_dir" if task == "classification"
                                                else "tiny_causal_dir")
            folder = tmp_path_factory.mktemp(f"straight-{setup}")
            result = run_recipe(load_recipe(_recipe(folder, model_dir, task, strategy)))
            assert result.status == "completed" and result.steps == TOTAL
            done[setup] = result.run_dir
        return done[setup]

    return get


def _weights(run_dir: Path) -> dict[str, Path]:
    """The result's weight files and the final checkpoint's."""
    files = {p.name: p for p in (run_dir / "model").glob("*.safetensors")}
    files["final checkpoint"] = run_dir / "checkpoints" / f"step-{TOTAL:07d}" / "model.safetensors"
    return files


@pytest.mark.parametrize("stop", list(STOPS))
@pytest.mark.parametrize("setup", list(SETUPS))
def test_every_strategy_resumes_exactly(setup, stop, tmp_path, request, uninterrupted):
    task, strategy = SETUPS[setup]
    signum, step = STOPS[stop]
    model_dir = request.getfixturevalue("tiny_classifier_dir" if task == "classification"
                                        else "tiny_causal_dir")
    recipe = load_recipe(_recipe(tmp_path, model_dir, task, strategy))
    run_dir = tmp_path / "runs" / "recipe"
    if signum is None:
        with pytest.raises(PefttoolError, match="killed"):
            run_recipe(recipe, observers=(DieAfter(step),))
        for newer in list_checkpoints(run_dir):
            if TrainState.from_file(newer / "trainer_state.json").global_step > step - step % 2:
                shutil.rmtree(newer)
        want_from = step - step % 2
    else:
        assert run_recipe(recipe, observers=(SignalAfter(signum, step),)).status == "interrupted"
        want_from = step
    newest = TrainState.from_file(list_checkpoints(run_dir)[-1] / "trainer_state.json")
    assert newest.global_step == want_from

    got = run_recipe(recipe, resume=True, run_dir=run_dir)
    assert (got.status, got.steps) == ("completed", TOTAL)
    assert [s.resumed_from_step for s in of_type(events_of(run_dir), "start")] == [0, want_from]

    reference = uninterrupted(setup)
    want_loss = {e.step: e.loss for e in of_type(events_of(reference), "step")}
    for e in of_type(events_of(run_dir), "step"):
        if e.step > want_from:
            assert e.loss == pytest.approx(want_loss[e.step], abs=1e-6), e.step
    a, b = metrics_of(reference), metrics_of(run_dir)
    assert a["best_step"] == b["best_step"]
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]]
    for x, y in zip(a["history"], b["history"]):
        assert x == pytest.approx(y, abs=1e-6)
    want_files, got_files = _weights(reference), _weights(run_dir)
    assert want_files.keys() == got_files.keys()
    for name, path in want_files.items():
        assert max_abs_diff(tensors(path), tensors(got_files[name])) <= 1e-6, name


# ------------------------------------------------------------------ what a checkpoint holds


@pytest.mark.parametrize("strategy", ["lora", "qlora"])
def test_a_checkpoint_holds_what_trains_not_the_frozen_base(strategy, uninterrupted):
    run_dir = uninterrupted(strategy)
    newest = list_checkpoints(run_dir)[-1]
    with safe_open(str(newest / "model.safetensors"), "pt") as fh:
        saved = {k: fh.get_tensor(k) for k in fh.keys()}
    # the adapters and the trained head only: no base weight, no 4-bit quantization state
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved), sorted(saved)[:5]
    info = json.loads((newest / "model_state.json").read_text())
    assert info["models"][0]["holds"] == "trainable"
    assert info["models"][0]["tensors"] == len(saved)
    assert info["models"][0]["base"]["frozen_params"] > 0
    # size: the weights file is the trainable tensors' bytes (plus a small header), and the
    # whole checkpoint stays within 1.2x (trainable weights + optimizer state) plus the fixed
    # small files (RNG, scheduler, trainer state)
    trainable = sum(t.numel() * t.element_size() for t in saved.values())
    weights = (newest / "model.safetensors").stat().st_size
    assert weights <= trainable * 1.05 + 16_384
    optimizer = (newest / "optimizer.bin").stat().st_size
    small = sum(p.stat().st_size for p in newest.iterdir()
                if p.name not in ("model.safetensors", "optimizer.bin"))
    assert small < 64_000
    assert weights + optimizer <= 1.2 * (trainable + optimizer)


def test_full_fine_tuning_checkpoints_keep_the_whole_model(uninterrupted):
    run_dir = uninterrupted("full")
    newest = list_checkpoints(run_dir)[-1]
    assert not (newest / "model_state.json").exists()
    with safe_open(str(newest / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert any(k.endswith("word_embeddings.weight") for k in keys) and len(keys) > 20


def test_resume_on_another_base_is_one_line(tmp_path, tiny_classifier_dir, capsys):
    from pefttool.cli import main
    from tiny_models import build_tiny_classifier

    base = tmp_path / "base"
    shutil.copytree(tiny_classifier_dir, base)
    recipe = load_recipe(_recipe(tmp_path, base, "classification", "lora"))
    run_dir = tmp_path / "runs" / "recipe"
    assert run_recipe(recipe, observers=(SignalAfter(signal.SIGINT, 2),)).status == "interrupted"
    # the base at that path is replaced by another model of the same shape (other weights)
    shutil.rmtree(base)
    build_tiny_classifier(base, seed=1)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert main(["resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "step-0000002 was trained on another base model" in err and "sample_sha256" in err, err
    assert len(err.strip().splitlines()) == 1, err
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    changed = [p.name for p in after if before.get(p) != after[p]]
    assert set(changed) <= {"events.jsonl", "recipe.toml", ".lock"}, changed


def test_resume_takes_set_for_the_keys_a_resume_may_change(tmp_path, tiny_classifier_dir, capsys):
    from pefttool.cli import main

    recipe = load_recipe(_recipe(tmp_path, tiny_classifier_dir, "classification", "lora"))
    run_dir = tmp_path / "runs" / "recipe"
    assert run_recipe(recipe, observers=(SignalAfter(signal.SIGINT, 2),)).status == "interrupted"
    capsys.readouterr()
    # a key that changes what is trained: one line, exit 2, before anything loads
    assert main(["resume", str(run_dir), "--set", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set train.lr: a resume continues the run as it began") or \
        "--set train.lr: a resume continues the run as it began" in err, err
    assert "train.threads" in err and len(err.strip().splitlines()) == 1
    assert len(of_type(events_of(run_dir), "start")) == 1
    # the keys it may change are taken, and the run ends as it would have
    assert main(["resume", str(run_dir), "--quiet", "--set", "train.log_every=3",
                 "--set", "eval.batch_size=5"]) == 0
    starts = of_type(events_of(run_dir), "start")
    assert [s.resumed_from_step for s in starts] == [0, 2]
    assert starts[-1].recipe["train"]["log_every"] == 3
    assert [e.step for e in of_type(events_of(run_dir), "step")][-3:] == [6, 9, 12]
