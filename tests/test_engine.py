"""The engine end to end on tiny models: a recipe goes in, a trained, evaluated, saved model comes out."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pefttool.engine import run_recipe
from pefttool.errors import OutputError
from pefttool.events import EndEvent, EvalEvent, StartEvent, StepEvent, read_events
from pefttool.headless import HeadlessReporter
from pefttool.recipe import load_recipe
from tiny_models import write_tiny_recipe

ROOT = Path(__file__).resolve().parent.parent


def events_of(run_dir: Path):
    return list(read_events(run_dir / "events.jsonl"))


def test_lora_run_trains_evaluates_and_saves_an_adapter_stock_peft_loads(tmp_path, tiny_classifier_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                                           overrides={"train.epochs": 3, "train.lr": 2e-2}))
    result = run_recipe(recipe)

    assert result.status == "completed"
    events = events_of(result.run_dir)
    kinds = [e.type for e in events]
    assert kinds[0] == "phase" and events[0].phase == "loading"
    assert kinds[-1] == "end" and "start" in kinds and "checkpoint" in kinds
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert steps[-1].step == steps[-1].total_steps
    assert sum(e.loss for e in steps[-3:]) < sum(e.loss for e in steps[:3]), "loss did not fall"
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert evals[0].step == 0 and len(evals) == 1 + 3  # before training + each epoch
    assert result.best > result.before["accuracy"]
    start = next(e for e in events if isinstance(e, StartEvent))
    assert 0 < start.params_trainable < start.params_total

    model_dir = result.run_dir / "model"
    assert (model_dir / "adapter_config.json").is_file()
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert json.loads((model_dir / "labels.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["best"] == result.best and metrics["data"]["train"]["kept"] > 0

    # Stock transformers + PEFT load the result, and it scores what the run reported.
    base = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    from pefttool.data import prepare_data

    data = prepare_data(recipe, tok, log=lambda m: None)
    batch = data.collate([data.eval[i] for i in range(len(data.eval))])
    with torch.no_grad():
        preds = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    accuracy = (preds == batch["labels"]).float().mean().item()
    assert accuracy == pytest.approx(result.best_metrics["accuracy"], abs=1e-6)


def test_early_stopping_after_the_last_epoch_is_no_early_stop(tmp_path, tiny_classifier_dir):
    """Issue 28.12: a run that trained every step said "EARLY STOPPED … 100 % step 12/12"
    when its last evaluation ran out of patience; nothing was stopped: it completed."""
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "train.epochs": 2, "train.lr": 1e-9, "early_stopping.enabled": True,
        "early_stopping.patience": 1, "early_stopping.min_delta": 0.05}))
    result = run_recipe(recipe)
    evals = [e for e in events_of(result.run_dir) if isinstance(e, EvalEvent)]
    assert evals[-1].bad_evals == 1            # patience ran out at the last evaluation…
    assert result.status == "completed" and result.steps == 2 * (48 // 8)   # …after every step
    end = events_of(result.run_dir)[-1]
    assert isinstance(end, EndEvent) and end.status == "completed"


def test_the_durations_agree_for_a_resumed_run_and_one_that_failed_while_loading(tmp_path):
    """Issue 28.12: the header said "early stopped in 9m 39s" (the whole run) and the log
    "after 38 steps in 6m 22s" (the resume alone); a run that failed after 31 s of loading
    said "failed in 0s"."""
    from pefttool.events import EventLog, PhaseEvent
    from pefttool.runfolder.summary import summarize

    failed = tmp_path / "failed"
    failed.mkdir()
    log = EventLog(failed)
    log.write(PhaseEvent(phase="loading", pid=4242, time=1000.0))
    log.write(EndEvent(status="failed", step=0, duration_s=31.0, message="no such column", time=1031.0))
    log.close()
    assert summarize(failed).duration_s == 31.0

    run = tmp_path / "resumed"
    run.mkdir()
    first = dict(run_dir=str(run), recipe={"name": "r"}, strategy="lora", total_steps=38,
                 steps_per_epoch=19, epochs=2, params_total=10, params_trainable=1,
                 model_memory_mb=1.0, device="cpu")
    log = EventLog(run)
    log.write(StartEvent(**first, pid=1, time=0.0))
    log.write(EndEvent(status="interrupted", step=16, duration_s=197.0, time=197.0))
    log.close()
    resume = StartEvent(**first, pid=2, resumed_from_step=16, time=500.0)
    stream = io.StringIO()
    reporter = HeadlessReporter(stream=stream, live=False, interval=0)
    reporter.pefttool_run_start(resume)
    log = EventLog(run)
    log.write(resume)
    end = EndEvent(status="early_stopped", step=30, duration_s=382.0, time=882.0)
    log.write(end)
    log.close()
    reporter.pefttool_run_end(end)
    assert "early stopped after 30 steps in 6m 22s (9m 39s with the earlier sessions)" in stream.getvalue()
    assert summarize(run).duration_s == 197.0 + 382.0     # the TUI's header: 9m 39s too


def test_full_fine_tune_saves_a_model_transformers_loads(tmp_path, tiny_classifier_dir):
    from transformers import AutoModelForSequenceClassification

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "full",
                                           overrides={"train.epochs": 2}))
    result = run_recipe(recipe)
    steps = [e for e in events_of(result.run_dir) if isinstance(e, StepEvent)]
    assert steps[-1].loss < steps[0].loss
    model = AutoModelForSequenceClassification.from_pretrained(result.run_dir / "model")
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_early_stopping_ends_the_run_when_the_metric_stops_improving(tmp_path, tiny_classifier_dir):
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "train.epochs": 6, "train.lr": 1e-9, "early_stopping.enabled": True,
        "early_stopping.patience": 2, "early_stopping.min_delta": 0.05}))
    result = run_recipe(recipe)
    assert result.status == "early_stopped"
    evals = [e for e in events_of(result.run_dir) if isinstance(e, EvalEvent)]
    # before training (a baseline, never "best"), the first trained evaluation (the first
    # best), then two evaluations without improvement
    assert len(evals) == 4 and not evals[0].is_best and evals[1].is_best
    assert evals[0].before
    assert evals[-1].bad_evals == 2
    assert result.steps < 6 * (48 // 8)
    end = events_of(result.run_dir)[-1]
    assert isinstance(end, EndEvent) and end.status == "early_stopped"


def test_max_steps_and_step_evaluation(tmp_path, tiny_classifier_dir):
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "train.epochs": 5, "train.max_steps": 7, "eval.every_steps": 3, "eval.before_training": False}))
    result = run_recipe(recipe)
    evals = [e.step for e in events_of(result.run_dir) if isinstance(e, EvalEvent)]
    assert result.steps == 7 and evals == [3, 6, 7]


def test_instruction_tuning_masks_prompts_and_reports_exact_match(tmp_path, tiny_causal_dir):
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", task="causal-lm",
                                           overrides={"eval.metric": "exact_match", "train.epochs": 1}))
    result = run_recipe(recipe)
    evals = [e for e in events_of(result.run_dir) if isinstance(e, EvalEvent)]
    assert set(evals[-1].metrics) == {"eval_loss", "perplexity", "exact_match", "contains_answer"}
    assert evals[-1].metrics["contains_answer"] >= evals[-1].metrics["exact_match"]
    assert evals[-1].metrics["eval_loss"] < evals[0].metrics["eval_loss"]
    assert (result.run_dir / "model" / "adapter_model.safetensors").is_file()


def test_a_non_empty_output_directory_is_never_overwritten(tmp_path, tiny_classifier_dir):
    path = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    out = tmp_path / "runs" / "recipe"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="already holds files that are not a pefttool run"):
        run_recipe(load_recipe(path))
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_headless_output_without_a_terminal_is_plain_lines(tmp_path, tiny_classifier_dir):
    stream = io.StringIO()
    reporter = HeadlessReporter(stream=stream, live=False, interval=0)
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora"))
    run_recipe(recipe, observers=(reporter,))
    text = stream.getvalue()
    assert "\r" not in text and "\033" not in text
    assert "step 12/12" in text and "ETA" in text
    assert "best accuracy" in text and "model:" in text


def test_cli_run_prints_progress_and_summary(tmp_path, tiny_classifier_dir):
    path = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={"train.epochs": 1})
    env = {**os.environ, "PEFTTOOL_PROGRESS_SECONDS": "0"}
    proc = subprocess.run([sys.executable, "-m", "pefttool.cli", "run", str(path), "--set", "train.lr=1e-2"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "completed after 6 steps" in proc.stdout
    assert "Traceback" not in proc.stderr
    recorded = load_recipe(tmp_path / "runs" / "recipe" / "recipe.toml")
    assert recorded.train.lr == 1e-2


def test_answer_metrics_tell_format_from_knowledge():
    from pefttool.metrics import contains_answer, exact_match

    predictions = ["This review is negative.", "Positive.", "positive, surely", "I can't tell"]
    references = ["negative", "positive", "negative", "positive"]
    assert exact_match(predictions, references) == 0.25
    assert contains_answer(predictions, references) == 0.5


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_evaluations_outside_training_leave_the_training_losses_bit_identical(task, tmp_path, request):
    """An evaluation before training, step evaluations and eval.samples replies draw no random
    number the training would have drawn: turning them on or off changes no training loss."""
    model_dir = request.getfixturevalue(f"tiny_{'classifier' if task == 'classification' else 'causal'}_dir")
    losses = {}
    for extra in (False, True):
        overrides = {"train.epochs": 1, "train.batch_size": 8, "method.dropout": 0.1,
                     "eval.before_training": extra, "eval.every_steps": 2 if extra else None}
        if task == "causal-lm" and extra:
            overrides["eval.samples"] = 2  # sampled replies: many random draws
        result = run_recipe(load_recipe(write_tiny_recipe(tmp_path / str(extra), model_dir, "lora",
                                                          task, overrides=overrides)))
        losses[extra] = [e.loss for e in read_events(result.run_dir / "events.jsonl")
                         if isinstance(e, StepEvent)]
    assert len(losses[True]) == 6
    assert losses[True] == losses[False]


def test_threads_zero_takes_the_free_cores_and_says_so_on_a_busy_machine(monkeypatch):
    from pefttool import engine

    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(engine.os, "getloadavg", lambda: (0.7, 0.5, 0.2))
    assert engine.cpu_threads(0) == (2, None)
    monkeypatch.setattr(engine.os, "getloadavg", lambda: (11.2, 10.0, 9.0))
    threads, warning = engine.cpu_threads(0)
    assert threads == 1
    assert "load average 11.2 on 2 cores" in warning and "train.threads" in warning
    assert engine.cpu_threads(2) == (2, None)  # a number the recipe sets is kept, busy or not
