"""train.compile: the model trains through torch.compile (inductor), and nothing else changes.

The slow test (marked `compile`: two compilations of a 1-layer tiny Llama, ~10-20 s each on 2
CPU cores) runs one run in three pieces: compiled, as a real `pefttool run` child SIGKILLed
mid-epoch; resumed uncompiled and stopped after the next step; resumed compiled to the end.
It must end where an uncompiled, uninterrupted run of the same recipe ends (every step's loss
and the weights within 1e-4: inductor's fused kernels round differently from eager ones, by
~1e-6 here), with no `_orig_mod.` key in any checkpoint or saved model, the saved adapter
loading with stock transformers + PEFT, and one compiled graph for batches of varying length
and size (dynamic shapes: no recompiles).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fault_helpers import (events_of, finish, max_abs_diff, metrics_of, of_type, start_pefttool,
                           tensors, wait_for_events)
from pefttool.cli import main
from pefttool.engine import run_recipe
from pefttool.errors import RecipeError
from pefttool.recipe import compile_problem, load_recipe
from test_run_integrity import StopAfter
from tiny_models import build_tiny_causal, write_tiny_recipe

# 60 rows, a quarter held out: 45 train rows, batch 8 → 6 steps, the last batch of 5; the
# instruction rows' lengths differ, so the padded length changes from batch to batch.
# Two adapted projections in one layer: the smallest graph that still has LoRA in it; with
# LoRA dropout, so the compiled run must draw the very dropout masks the uncompiled one does.
RECIPE = {"train.epochs": 1, "train.batch_size": 8, "train.checkpoint_every": 2,
          "train.keep_checkpoints": 5, "eval.before_training": False,
          "method.target_modules": ["q_proj", "v_proj"], "method.dropout": 0.1}
TOTAL = 6


def _recipe(folder: Path, model_dir: Path, compile_: bool) -> Path:
    return write_tiny_recipe(folder, model_dir, "lora", "causal-lm", rows=60,
                             overrides={**RECIPE, "train.compile": compile_})


def _losses(run_dir: Path) -> dict[int, float]:
    return {e.step: e.loss for e in of_type(events_of(run_dir), "step")}


def _logs(run_dir: Path) -> list[str]:
    return [e.message for e in of_type(events_of(run_dir), "log")]


def _no_orig_mod(run_dir: Path) -> int:
    """Checks every safetensors file of the run; returns how many it checked."""
    from safetensors import safe_open

    files = sorted(run_dir.rglob("*.safetensors"))
    for path in files:
        with safe_open(str(path), "pt") as f:
            bad = [k for k in f.keys() if "_orig_mod" in k]
        assert not bad, (path, bad[:3])
    return len(files)


@pytest.mark.compile
def test_compiled_run_killed_resumes_with_compile_off_then_on(tmp_path):
    model_dir = build_tiny_causal(tmp_path / "model", layers=1)
    reference = run_recipe(load_recipe(_recipe(tmp_path / "ref", model_dir, False))).run_dir
    assert not any("torch.compile" in m for m in _logs(reference))

    folder = tmp_path / "run"
    recipe = _recipe(folder, model_dir, True)
    run_dir = folder / "runs" / "recipe"
    # 1. compiled, SIGKILLed after the checkpoint of step 2 and one more step
    proc = start_pefttool("run", recipe, cwd=folder)
    seen = wait_for_events(proc, run_dir, lambda events: any(
        e.type == "checkpoint" and e.step == 2 for e in events) and any(
        e.type == "step" and e.step >= 3 for e in events), timeout=300)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    assert max(e.step for e in of_type(seen, "step")) < 4, "killed too late"
    assert any("first step took" in e.message for e in of_type(seen, "log"))
    # A compiled run checkpoints the plain module: the same keys as an uncompiled run's.
    ckpt = "checkpoints/step-0000002/model.safetensors"
    assert tensors(run_dir / ckpt).keys() == tensors(reference / ckpt).keys()

    # 2. resumed with compile off (from the compiled run's checkpoint), stopped after step 4
    uncompiled = load_recipe(recipe, ["train.compile=false"])
    assert run_recipe(uncompiled, resume=True, observers=(StopAfter(4),)).status == "interrupted"
    # 3. resumed with compile on (from the uncompiled run's checkpoint), to the end. (`pefttool
    # resume RUN` would take the recipe as the last piece ran it: compile off.)
    assert main(["run", str(recipe), "--resume", "--quiet"]) == 0

    starts = of_type(events_of(run_dir), "start")
    assert [s.resumed_from_step for s in starts] == [0, 2, 4]
    got, want = _losses(run_dir), _losses(reference)
    assert sorted(got) == sorted(want) == list(range(1, TOTAL + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-4), step
    assert metrics_of(run_dir)["status"] == "completed"
    assert metrics_of(run_dir)["best"] == pytest.approx(metrics_of(reference)["best"], abs=1e-4)
    final = f"checkpoints/step-{TOTAL:07d}/model.safetensors"
    adapter = "model/adapter_model.safetensors"
    diff = max(max_abs_diff(tensors(run_dir / final), tensors(reference / final)),
               max_abs_diff(tensors(run_dir / adapter), tensors(reference / adapter)))
    assert diff <= 1e-4, diff
    assert _no_orig_mod(run_dir) >= 4
    # Steps 5 and 6 have other padded lengths, the last a batch of 5: one graph served both.
    logs = _logs(run_dir)
    assert "torch.compile: 1 graph(s) compiled in this run, 0 graph break(s)" in logs, logs

    # Stock transformers + PEFT load the saved adapter.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run_dir / "model").eval()
    assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits).all()
    print(f"\ncompiled run killed at step 3, resumed uncompiled from step 2, then compiled from "
          f"step 4: max |Δw| vs the uncompiled uninterrupted run {diff:.2g}, max |Δloss| "
          f"{max(abs(got[s] - want[s]) for s in want):.2g}")


def test_compile_is_refused_where_it_cannot_run(tmp_path, tiny_classifier_dir, monkeypatch, capsys):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, overrides={"train.compile": True})
    assert load_recipe(recipe).train.compile is True  # this machine has g++ and Python.h
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with pytest.raises(RecipeError) as exc:
        load_recipe(recipe)
    problem = [p for p in exc.value.problems if p.startswith("train.compile")]
    assert len(problem) == 1 and "'no-such-compiler++'" in problem[0]
    assert "train.compile = false" in problem[0] and "\n" not in problem[0]
    assert main(["validate", str(recipe)]) == 2
    assert "train.compile" in capsys.readouterr().err
    # a GPU without Triton; off: nothing is checked
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert "Triton" in compile_problem("cuda", lambda: True)
    assert compile_problem("auto", lambda: False).startswith("train.compile: true builds C++")
    monkeypatch.delenv("CXX")
    assert load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, name="off")).train.compile is False


def test_accelerate_dynamo_variables_do_not_overrule_the_recipe(tmp_path, tiny_classifier_dir,
                                                                monkeypatch):
    """`accelerate config` with dynamo on exports ACCELERATE_DYNAMO_*: train.compile decides."""
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "inductor")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, overrides={
        "train.epochs": 1, "train.max_steps": 1, "eval.before_training": False})
    result = run_recipe(load_recipe(recipe))
    assert result.status == "completed"
    assert not any("torch.compile" in m for m in _logs(result.run_dir))
