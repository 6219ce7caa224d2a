"""Bad inputs found after the first bad-input matrix (tests/test_faults.py): damaged weights,
numbers the libraries refuse, limits the model or the machine sets, non-regular files.

Each gives exit 2 and one line naming the key (or file) and the fix; nothing is left half
written, and nothing of the user's changes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_faults import assert_clean_failure, assert_nothing_half_written, cli, tree
from tiny_models import write_tiny_recipe


def damaged_copy(model_dir: Path, dest: Path, size: int) -> Path:
    shutil.copytree(model_dir, dest)
    os.truncate(dest / "model.safetensors", size)
    return dest


@pytest.mark.parametrize("size", [4, 1000, -64], ids=["no-header", "header-cut", "tensors-cut"])
def test_a_damaged_weights_file_names_model_path_and_the_file(capsys, tmp_path, tiny_classifier_dir,
                                                              size):
    full = (tiny_classifier_dir / "model.safetensors").stat().st_size
    model = damaged_copy(tiny_classifier_dir, tmp_path / "damaged", size if size > 0 else full + size)
    before = tree(model)
    recipe = write_tiny_recipe(tmp_path, model, "lora")
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "model.path: the weights file", str(model / "model.safetensors"),
                         "is damaged", "re-download or re-save")
    assert tree(model) == before
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


def test_a_truncated_gguf_file_names_the_file(capsys, tmp_path, tiny_classifier_dir):
    pytest.importorskip("gguf")
    from gguf import GGUFWriter

    folder = tmp_path / "gguf-model"
    folder.mkdir()
    writer = GGUFWriter(str(folder / "m.gguf"), "llama")
    import numpy as np

    writer.add_tensor("token_embd.weight", np.zeros((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.truncate(folder / "m.gguf", (folder / "m.gguf").stat().st_size - 4000)
    recipe = write_tiny_recipe(tmp_path, folder, "lora", overrides={"model.gguf_file": "m.gguf"})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "model.path: the weights file", "m.gguf", "is damaged")
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


@pytest.mark.parametrize("key,value,needle", [
    ("train.seed", 1180591620717411303424, "train.seed: Input should be less than or equal to 4294967295"),
    ("data.seed", -1, "data.seed: Input should be greater than or equal to 0"),
    ("train.weight_decay", float("inf"), "train.weight_decay: Input should be a finite number"),
    ("train.lr", float("nan"), "train.lr: Input should be a finite number"),
    ("method.alpha", float("inf"), "method.alpha: Input should be a finite number"),
    ("train.threads", 100000, "train.threads: 100000 is more than this machine's"),
    # issue 30, item 16: 512 processes on a machine without 512 GPUs (or cores, on gloo)
    ("distributed.processes", 512, "distributed.processes: 512 is more than this machine's"),
])
def test_numbers_the_libraries_or_the_machine_refuse_fail_validation(capsys, tmp_path,
                                                                      tiny_classifier_dir, key,
                                                                      value, needle):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={key: value})
    rc, out, err = cli(capsys, "validate", recipe)
    assert_clean_failure(rc, out, err, needle)


@pytest.mark.parametrize("value,needles", [
    ("runs/a\nb", ["output.dir: contains a newline", "write the path on one line"]),
    ("runs/a\tb", ["output.dir: contains the control character '\\t'"]),
    ("runs/" + "x" * 300 + "/{time}", ["output.dir: the folder name 'xxxx", "is 300 bytes",
                                       "at most 255 bytes per name"]),
    ("runs/" + "é" * 120 + "-{name}-{time}", ["is 267 bytes"]),   # 240 bytes of é + -recipe- + {time}
])
def test_an_output_dir_no_file_system_takes_fails_validation(capsys, tmp_path, tiny_classifier_dir,
                                                             value, needles):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={"output.dir": value})
    rc, out, err = cli(capsys, "validate", recipe)
    assert_clean_failure(rc, out, err, *needles)
    assert not (tmp_path / "runs").exists()


def test_the_logged_loss_is_a_mean_when_grad_accum_exceeds_the_batches_left(tmp_path,
                                                                              tiny_classifier_dir):
    """grad_accum 50 with 6 batches an epoch: each step accumulates 6 micro-batches, and the
    logged loss is their mean (it was their sum / 50: ~0.08 for a loss of ~0.69)."""
    from pefttool.engine import run_recipe
    from pefttool.events import EvalEvent, StepEvent, read_events
    from pefttool.recipe import load_recipe

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "train.grad_accum": 50, "train.epochs": 1, "train.lr": 1e-6}))
    result = run_recipe(recipe)
    events = list(read_events(result.run_dir / "events.jsonl"))
    (step,) = [e for e in events if isinstance(e, StepEvent)]
    before = next(e for e in events if isinstance(e, EvalEvent)).metrics["eval_loss"]
    # lr 1e-6: the weights barely move, so the train loss is the untrained model's.
    assert abs(step.loss - before) < 0.25 * before, (step.loss, before)


def test_a_fifo_named_toml_does_not_hang_the_recipe_list(tmp_path):
    import subprocess
    import sys

    from fault_helpers import child_env

    os.mkfifo(tmp_path / "pipe.toml")
    result = subprocess.run([sys.executable, "-m", "pefttool.cli", "recipes"], cwd=tmp_path,
                            env=child_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pipe.toml" in result.stdout and "1 problem(s)" in result.stdout
    assert "lora.toml" in result.stdout  # the built-ins are still listed


@pytest.mark.parametrize("path,needle", [("/dev/zero", "is not a regular file"),
                                         ("/dev/null", "is not a regular file")])
def test_a_device_as_a_recipe_is_one_line(capsys, path, needle):
    rc, out, err = cli(capsys, "validate", path)
    assert_clean_failure(rc, out, err, needle)


def test_a_huge_file_as_a_recipe_is_one_line(capsys, tmp_path):
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    rc, out, err = cli(capsys, "validate", big)
    assert_clean_failure(rc, out, err, "too large for a recipe")


def test_max_length_beyond_the_models_positions_fails_before_training(capsys, tmp_path,
                                                                       tiny_classifier_dir):
    import json

    limit = json.loads((tiny_classifier_dir / "config.json").read_text())["max_position_embeddings"]
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"data.max_length": limit * 4})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, f"data.max_length: {limit * 4} is more than the {limit} "
                         "positions", f"set data.max_length to at most {limit}")
    assert not (tmp_path / "runs" / "recipe" / "model").exists()
    assert not list((tmp_path / "runs" / "recipe").glob("checkpoints/*"))


def _before_accuracy(tmp_path: Path, model_dir: Path, labels: list[str], **extra) -> float:
    from pefttool.engine import run_recipe
    from pefttool.recipe import load_recipe

    recipe = load_recipe(write_tiny_recipe(tmp_path, model_dir, "lora", overrides={
        "task.labels": labels, "train.max_steps": 1, "train.epochs": 1, **extra}))
    return run_recipe(recipe).before["accuracy"]


def test_labels_in_another_order_keep_the_saved_heads_meaning(tmp_path, tiny_classifier_dir):
    """The tiny classifier's head was saved for [negative, positive]: listing the labels the
    other way round must not swap what the head predicts (it gave 1 - accuracy)."""
    same = _before_accuracy(tmp_path / "a", tiny_classifier_dir, ["negative", "positive"])
    swapped = _before_accuracy(tmp_path / "b", tiny_classifier_dir, ["positive", "negative"])
    assert swapped == same
    assert same != 0.5  # the check can fail: with 16 rows, 1 - accuracy differs


def test_new_labels_against_a_saved_head_need_reset_head(capsys, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "task.labels": ["negative", "positive", "neutral"]})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "task.labels: the model at model.path has a trained head",
                         "'neutral' is new to it", "model.reset_head = true")
    assert _before_accuracy(tmp_path / "reset", tiny_classifier_dir,
                            ["negative", "positive", "neutral"], **{"model.reset_head": True}) >= 0


def test_labels_differing_only_in_case_name_both_spellings(capsys, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "task.labels": ["Negative", "positive"], "model.reset_head": True})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "value 'negative' differs only in case from 'Negative' in "
                         "task.labels", "column 'label'")


def test_gradient_checkpointing_trains_to_the_same_weights(tmp_path, tiny_causal_dir):
    """Recomputing activations must not change what is learnt (LoRA on a frozen base: the
    adapters still get their gradients)."""
    from fault_helpers import tensors
    from pefttool.engine import run_recipe
    from pefttool.events import LogEvent, read_events
    from pefttool.recipe import load_recipe

    results = {}
    for on in (False, True):
        recipe = load_recipe(write_tiny_recipe(tmp_path / str(on), tiny_causal_dir, "lora", "causal-lm",
                                               overrides={"train.gradient_checkpointing": on,
                                                          "train.max_steps": 4}))
        result = run_recipe(recipe)
        logs = [e.message for e in read_events(result.run_dir / "events.jsonl") if isinstance(e, LogEvent)]
        assert any(m.startswith("gradient checkpointing: on") for m in logs) == on
        results[on] = tensors(result.run_dir / "model" / "adapter_model.safetensors")
    diff = max(float((results[True][k] - results[False][k]).abs().max()) for k in results[True])
    assert diff < 1e-5
    assert any(float(v.abs().max()) > 0 for k, v in results[True].items() if "lora_B" in k)


def test_flash_attention_without_its_package_or_a_gpu_is_a_recipe_problem(capsys, tmp_path,
                                                                          tiny_causal_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", "causal-lm",
                               overrides={"model.attn_implementation": "flash_attention_2"})
    rc, out, err = cli(capsys, "validate", recipe)
    assert_clean_failure(rc, out, err, "model.attn_implementation: 'flash_attention_2' needs")
