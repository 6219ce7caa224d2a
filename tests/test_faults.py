"""A clear answer to every bad input, and to numerical faults.

Each bad input gives: exit code ≠ 0, one line on stderr naming the problem and the fix (a
recipe's problems: one line per problem), no traceback, nothing half-written (no partial
model/, no temporary folders) and nothing of the user's overwritten.

Recipe problems run `pefttool run` as a child process (a bad recipe fails before torch loads,
so these are quick). Problems found while setting a run up run `pefttool.cli.main` in this
process. Disk full and a missing bitsandbytes need a child with its own limits / import path.
"""

from __future__ import annotations

import hashlib
import resource
import signal
from pathlib import Path
from typing import Any, Callable

import pytest

import pefttool
from fault_helpers import (child_env, events_of, leftovers, metrics_of, of_type, run_pefttool,
                           tensors, tree)
from pefttool.runfolder.checkpoints import TrainState, list_checkpoints
from pefttool.cli import main
from pefttool.plugins import get_plugin_host
from pefttool_lora import LoraStrategy
from tiny_models import write_pickle_only_copy, write_tiny_recipe


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_clean_failure(rc: int, out: str, err: str, *needles: str, code: int = 2,
                         lines: int = 1) -> list[str]:
    """rc == code, `lines` lines on stderr (the first starts with 'error:'), each needle in
    stderr, no traceback anywhere. Returns stderr's lines."""
    got = err.strip().splitlines()
    assert rc == code, f"exit {rc}\nstderr:\n{err}"
    assert "Traceback" not in out + err
    assert "internal error" not in err
    assert len(got) == lines, f"expected {lines} line(s) on stderr, got:\n{err}"
    assert got[0].startswith("error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    return got


def assert_nothing_half_written(run_dir: Path, model_expected: bool = False) -> None:
    assert leftovers(run_dir) == []
    if not model_expected:
        assert not (run_dir / "model").exists(), "a model/ appeared from a failed run"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`pefttool ARGS` in this process."""
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# =============================================================== the recipe (child processes)


def drop_section(recipe: Path, name: str) -> None:
    import tomllib

    from tiny_models import to_toml

    data = tomllib.loads(recipe.read_text())
    del data[name]
    recipe.write_text(to_toml(data))


RecipeCase = tuple[str, dict[str, Any], Callable[[Path], None] | None, tuple[str, ...], int]

RECIPE_CASES: list[RecipeCase] = [
    # id, overrides, extra set-up of the folder, text expected on stderr, problem lines
    ("unknown key", {"train.epoch": 3}, None,
     ("train.epoch: unknown key", "did you mean 'epochs'?"), 1),
    ("wrong type", {"train.lr": "fast"}, None, ("train.lr:", "valid number", "'fast'"), 1),
    ("out-of-range value", {"train.epochs": 0}, None,
     ("train.epochs:", "greater than or equal to 1", "(got 0)"), 1),
    ("missing data file", {"data.train": "nowhere.csv"}, None,
     ("data.train: 'nowhere.csv' does not exist", "fix the path"), 1),
    ("missing model path", {"model.path": "/no/such/model"}, None,
     ("model.path: '/no/such/model' does not exist", "fix the path"), 1),
    ("strategy not installed", {"method.strategy": "lorra", "method.r": None, "method.alpha": None,
                                "method.dropout": None}, None,
     ("method.strategy: no strategy named 'lorra'", "did you mean 'lora'?", "pefttool plugins"), 1),
    ("fp16 on CPU", {"train.mixed_precision": "fp16"}, None,
     ("train.mixed_precision: 'fp16' is unusable without a GPU", 'use "bf16" or "no"'), 1),
    ("missing section", {}, lambda folder: drop_section(folder / "recipe.toml", "task"),
     ("task: required key is missing; add it",), 1),
    ("three problems", {"train.epochs": 0, "train.lr": "fast", "train.epoch": 3}, None,
     ("3 problems", "train.epochs:", "train.lr:", "train.epoch: unknown key"), 4),
]


@pytest.mark.parametrize("case", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_a_bad_recipe_is_one_line_per_problem(case, tmp_path, tiny_classifier_dir):
    _, overrides, setup, needles, n_lines = case
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides=overrides)
    if setup:
        setup(tmp_path)
    before = tree(tmp_path)
    result = run_pefttool("run", recipe, cwd=tmp_path, timeout=60)
    lines = assert_clean_failure(result.returncode, result.stdout, result.stderr, *needles,
                                 lines=n_lines)
    if n_lines > 1:
        assert all(line.startswith("  - ") for line in lines[1:])
    assert result.stdout == ""
    assert tree(tmp_path) == before, "a bad recipe changed files"
    assert not (tmp_path / "runs").exists()


def test_malformed_toml_names_the_line(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[model]\npath = "m"\n[train\nepochs = 2\n')
    result = run_pefttool("run", recipe, cwd=tmp_path, timeout=60)
    assert_clean_failure(result.returncode, result.stdout, result.stderr, "not valid TOML",
                         "line 3")
    assert recipe.read_text() == '[model]\npath = "m"\n[train\nepochs = 2\n'


def test_a_recipe_that_is_not_utf8_or_missing_is_one_line(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    result = run_pefttool("validate", latin, cwd=tmp_path, timeout=60)
    assert_clean_failure(result.returncode, result.stdout, result.stderr, "not UTF-8", "save it as UTF-8")
    missing = run_pefttool("run", tmp_path / "nope.toml", cwd=tmp_path, timeout=60)
    assert_clean_failure(missing.returncode, missing.stdout, missing.stderr, "nope.toml: file not found")


def test_a_malformed_override_is_one_line(tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    result = run_pefttool("run", recipe, "--set", "train.lr", cwd=tmp_path, timeout=60)
    assert_clean_failure(result.returncode, result.stdout, result.stderr, "is not KEY=VALUE",
                         "--set train.lr=2e-4")


# =============================================================== setting a run up (in process)


def csv_with(tmp_path: Path, recipe: Path, transform: Callable[[bytes], bytes]) -> Path:
    data = tmp_path / "recipe.csv"
    data.write_bytes(transform(data.read_bytes()))
    return data


def test_non_utf8_data_names_the_row_and_the_fix(capsys, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    data = csv_with(tmp_path, recipe, lambda b: b + "caf\xe9 was awful,negative\n".encode("latin-1"))
    kept = digest(data)
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "recipe.csv", "line 66", "is not UTF-8", "re-save the file as UTF-8",
                         'data.on_bad_rows = "skip"')
    assert digest(data) == kept
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


def test_a_missing_column_lists_the_columns(capsys, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={"data.text_column": "review"})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "no column 'review'", "the columns are: text, label",
                         "set data.text_column")
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


def test_a_csv_header_naming_a_column_twice_is_refused(capsys, tmp_path, tiny_classifier_dir):
    """Issue 30, item 14: training read the first of two 'text' columns (pandas renames the
    second 'text.1') while predict read the last; neither is guessed any more."""
    data = tmp_path / "twice.csv"
    data.write_text("text,label,text\n" + "".join(f"good {i},positive,bad {i}\n" for i in range(20)))
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={"data.train": str(data)})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "header names the column 'text' 2 times", "rename all but one")
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


def test_a_cell_too_large_to_read_is_a_bad_row_named(capsys, tmp_path, tiny_classifier_dir, monkeypatch):
    """Issue 30, item 5: a 1 GB CSV cell ended in 'internal error: MemoryError' after 87 s.
    A cell over the reader's limit (64 MiB; 2,000 characters here) is a bad row, named, and
    dropped with data.on_bad_rows = "skip"."""
    import pefttool.data.reading as reading

    monkeypatch.setattr(reading, "CSV_FIELD_LIMIT", 2000)
    data = tmp_path / "big.csv"
    data.write_text("text,label\n" + "".join(f"good {i},positive\n" for i in range(20))
                    + "x" * 5000 + ",negative\n" + "".join(f"bad {i},negative\n" for i in range(20)))
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={"data.train": str(data)})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "row 21", "field larger than field limit (2000)")
    assert_nothing_half_written(tmp_path / "runs" / "recipe")
    rc, out, err = cli(capsys, "validate", recipe, "--set", 'data.on_bad_rows="skip"')
    assert rc == 0, err
    from pefttool.data import prepare_data
    from pefttool.models import load_tokenizer
    from pefttool.recipe import load_recipe

    skipping = load_recipe(recipe, ['data.on_bad_rows="skip"'])
    prepared = prepare_data(skipping, load_tokenizer(skipping))
    assert len(prepared.train) + len(prepared.eval) == 40   # the 41st row, too large, dropped


def test_data_empty_after_cleaning_says_what_was_removed(capsys, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    csv_with(tmp_path, recipe, lambda b: b"text,label\n ,negative\n,positive\n   ,negative\n")
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "no usable rows left in data.train after cleaning",
                         "removed 3 empty text")
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


def test_labels_outside_the_label_set_are_named(capsys, tmp_path, tiny_classifier_dir):
    # task.labels names labels the data does not use: every row falls outside the set.
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"task.labels": ["bad", "good"]})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "no usable rows left", "removed 64 label not in task.labels",
                         "(e.g. 'negative', 'positive')", "check the columns")
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


def test_a_label_id_outside_the_label_set_names_the_row(capsys, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    csv_with(tmp_path, recipe, lambda b: b + b"a so-so film,7\n")
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "line 66", "label id 7, out of range", "task.labels",
                         'data.on_bad_rows = "skip"')
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


def test_a_label_outside_the_label_set_stops_the_run_when_the_recipe_says_so(capsys, tmp_path,
                                                                            tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"data.unknown_labels": "error"})
    csv_with(tmp_path, recipe, lambda b: b + b"a so-so film,neutral\n")
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "line 66", "column 'label'", "'neutral' is not one of negative, "
                         "positive", "add it to task.labels", 'data.unknown_labels = "drop"')
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


def test_a_folder_that_is_not_a_model(capsys, tmp_path, tiny_classifier_dir):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    recipe = write_tiny_recipe(tmp_path, folder, "lora")
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "is not a model folder (no config.json",
                         "point it at the folder holding config.json")
    assert tree(folder) == {"notes.txt": b"mine"}
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


def test_target_modules_matching_no_layer_lists_the_layers(capsys, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"method.target_modules": ["q_proj", "query"]})
    before = tree(tiny_classifier_dir)
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "method.target_modules: 'q_proj' names no layer",
                         'use "all-linear" or names from:', "query", "value")
    assert tree(tiny_classifier_dir) == before
    assert_nothing_half_written(tmp_path / "runs" / "recipe")


def test_pickle_weights_are_refused_unless_allowed(capsys, tmp_path, tiny_classifier_dir):
    model = write_pickle_only_copy(tiny_classifier_dir, tmp_path / "pickled")
    recipe = write_tiny_recipe(tmp_path, model, "lora")
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "has only pickle weights (pytorch_model.bin)",
                         "convert them to safetensors", "model.allow_pickle = true")
    assert_nothing_half_written(tmp_path / "runs" / "recipe")

    # Allowed on purpose: it loads, and the start of the run says so (as it does for
    # trust_remote_code, off unless the recipe turns it on; then a warning names the code files).
    (model / "modeling_extra.py").write_text("# code shipped with the model\n")
    rc, out, err = cli(capsys, "run", recipe, "--set", "model.allow_pickle=true", "--set",
                       "model.trust_remote_code=true", "--set", "train.max_steps=1", "--set",
                       "eval.before_training=false", "--set", "output.overwrite=true")
    assert rc == 0, err
    assert "safety: weights pickle, allow_pickle=true, trust_remote_code=true" in out
    assert "model.trust_remote_code = true: loading runs the Python code shipped with the model " \
           "(modeling_extra.py)" in out + err
    start = of_type(events_of(tmp_path / "runs" / "recipe"), "start")[-1]
    assert start.safety["allow_pickle"] is True and start.safety["trust_remote_code"] is True


class _Boom:
    @pefttool.hookimpl
    def pefttool_step_end(self, event):
        if event.step == 2:
            raise RuntimeError("dashboard unreachable")


@pytest.fixture
def boom_plugin():
    host = get_plugin_host()
    host.register(_Boom(), "boom")
    yield
    host.unregister("boom")


def test_a_plugin_raising_in_a_hook_is_named_with_the_hook(capsys, boom_plugin, tmp_path,
                                                           tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"train.checkpoint_every": 1, "eval.every_steps": 1})
    rc, out, err = cli(capsys, "run", recipe)
    # A plugin failing mid-run is a failed training (3), checkpointed first, and resumable.
    assert_clean_failure(rc, out, err, "plugin 'boom' raised in pefttool_step_end",
                         "RuntimeError: dashboard unreachable", "the run is saved at step 2",
                         "pefttool resume", code=3)
    run_dir = tmp_path / "runs" / "recipe"
    end = events_of(run_dir)[-1]
    assert end.type == "end" and end.status == "failed" and "plugin 'boom'" in end.message
    assert end.exit_code == 3
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-0000001", "step-0000002"]
    assert_nothing_half_written(run_dir, model_expected=True)  # the step-1 model is complete
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()


# -------------------------------------------------------------- the output directory


def test_output_dir_that_cannot_be_created(capsys, tmp_path, tiny_classifier_dir):
    # Root may write anywhere, but not below a file: a real write failure.
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"output.dir": str(blocker / "run")})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, f"output.dir: cannot write to {blocker / 'run'}",
                         "Not a directory", "choose a writable output.dir")
    assert blocker.read_text() == "mine"


def test_output_dir_in_a_pseudo_filesystem(capsys, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"output.dir": "/proc/pefttool-run"})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "output.dir: cannot write to /proc/pefttool-run",
                         "choose a writable output.dir")


def test_output_dir_that_is_a_file(capsys, tmp_path, tiny_classifier_dir):
    target = tmp_path / "results.txt"
    target.write_text("mine")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"output.dir": str(target)})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "is a file, not a folder", "choose another output.dir")
    assert target.read_text() == "mine"


def test_output_dir_not_empty_is_never_touched(capsys, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    out_dir = tmp_path / "runs" / "recipe"
    (out_dir / "model").mkdir(parents=True)
    (out_dir / "notes.txt").write_text("mine")
    (out_dir / "model" / "weights.bin").write_bytes(b"precious")
    before = tree(out_dir)
    rc, out, err = cli(capsys, "run", recipe)
    # Not a run: neither resume nor overwrite is offered (there is nothing of ours there).
    lines = assert_clean_failure(rc, out, err, "already holds files that are not a pefttool run",
                                 "model, notes.txt", "choose another output.dir")
    assert "resume" not in lines[0] and "overwrite" not in lines[0]
    assert tree(out_dir) == before


def test_disk_full_while_writing_a_checkpoint(tmp_path, tiny_classifier_dir):
    # A 2.5 MB file-size limit: the run's small files and the model (a rank-512 adapter,
    # ~1.8 MB, + tokenizer) fit; the first checkpoint's optimizer state (two moments per
    # adapter weight, ~3.7 MB) does not: EFBIG, as on a full disk. (A checkpoint holds only
    # what trains, so the adapter is made large enough for its state to pass the limit.)
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"train.checkpoint_every": 2, "eval.every_steps": 1,
                                          "method.r": 512})
    run_dir = tmp_path / "runs" / "recipe"
    result = run_pefttool("run", recipe, cwd=tmp_path, preexec_fn=file_size_limit(2_500_000))
    assert_clean_failure(result.returncode, result.stdout, result.stderr,
                         f"cannot write a checkpoint in {run_dir} (File too large)", "free disk space",
                         "then resume")
    assert list_checkpoints(run_dir) == [] and list((run_dir / "checkpoints").iterdir()) == []
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()  # the step-1 model, whole
    assert_nothing_half_written(run_dir, model_expected=True)
    assert events_of(run_dir)[-1].status == "failed"


def test_disk_full_while_saving_the_model(tmp_path, tiny_classifier_dir):
    # 300 kB: the tokenizer (700 kB) cannot be saved with the model.
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    run_dir = tmp_path / "runs" / "recipe"
    result = run_pefttool("run", recipe, cwd=tmp_path, preexec_fn=file_size_limit(300_000))
    assert_clean_failure(result.returncode, result.stdout, result.stderr,
                         f"cannot save the model to {run_dir / 'model'} (File too large)",
                         "free disk space")
    assert_nothing_half_written(run_dir)  # no model/, no .model-tmp


def file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit raises EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_qlora_without_bitsandbytes(tmp_path, tiny_classifier_dir):
    blocker = tmp_path / "no-bnb"
    blocker.mkdir()
    (blocker / "bitsandbytes.py").write_text(
        'raise ImportError("No module named \'bitsandbytes\' (blocked by a test)")\n')
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "qlora")
    result = run_pefttool("run", recipe, cwd=tmp_path, env=child_env(PYTHONPATH=str(blocker)))
    assert_clean_failure(result.returncode, result.stdout, result.stderr,
                         "QLoRA needs bitsandbytes: pip install bitsandbytes")
    assert not (tmp_path / "runs").exists()


# =============================================================== numerical faults


class NanAtStep(LoraStrategy):
    """LoRA whose training forward returns a NaN loss at the NAN_AT-th batch."""

    name = "nan-at-step"
    NAN_AT = 5

    def wrap(self, model, recipe, options):
        model = super().wrap(model, recipe, options)
        calls = {"n": 0}

        def poison(module, args, kwargs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] == self.NAN_AT:
                    output.loss = output.loss * float("nan")
            return output

        model.register_forward_hook(poison, with_kwargs=True)
        return model


class _NanPlugin:
    @pefttool.hookimpl
    def pefttool_register_strategies(self, register):
        register(NanAtStep())


@pytest.fixture
def nan_strategy():
    host = get_plugin_host()
    host.register(_NanPlugin(), "nan-plugin")
    yield "nan-at-step"
    host.unregister("nan-plugin")


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(
        capsys, nan_strategy, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, nan_strategy,
                               overrides={"train.checkpoint_every": 2})
    run_dir = tmp_path / "runs" / "recipe"
    rc, out, err = cli(capsys, "run", recipe)
    good = run_dir / "checkpoints" / "step-0000004"
    assert_clean_failure(rc, out, err, "loss is nan at step 5 (epoch 1)",
                         f"last good checkpoint: {good}", "lower train.lr",
                         'train.on_nan = "skip"', code=3)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-0000002", "step-0000004"]
    assert TrainState.from_file(good / "trainer_state.json").global_step == 4
    end = events_of(run_dir)[-1]
    assert end.status == "failed" and end.exit_code == 3 and "step 5" in end.message
    assert max(e.step for e in of_type(events_of(run_dir), "step")) == 4
    assert_nothing_half_written(run_dir, model_expected=True)


def test_on_nan_skip_skips_the_batch_and_finishes(capsys, nan_strategy, tmp_path, tiny_classifier_dir):
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, nan_strategy,
                               overrides={"train.on_nan": "skip"})
    run_dir = tmp_path / "runs" / "recipe"
    rc, out, err = cli(capsys, "run", recipe)
    assert rc == 0, err
    assert "warning: loss is nan at step 5: batch skipped (1 so far)" in out
    warnings = [e for e in of_type(events_of(run_dir), "log") if e.level == "warning"
                and not e.message.startswith("the eval set has only")]  # tiny data's own warning
    assert [w.message for w in warnings] == ["loss is nan at step 5: batch skipped (1 so far)"]
    metrics = metrics_of(run_dir)
    assert metrics["status"] == "completed" and metrics["nan_skipped"] == 1
    assert metrics["steps"] == 12 - 1  # one batch of 12 had no optimizer step
    losses = [e.loss for e in of_type(events_of(run_dir), "step")]
    assert all(loss == loss for loss in losses), "a NaN reached the logged loss"
    weights = tensors(run_dir / "model" / "adapter_model.safetensors")
    assert all(bool(t.isfinite().all()) for t in weights.values())


def test_a_closed_pipe_ends_a_command_quietly():
    """`pefttool recipes | head -0` (issue 30, item 9): the reader is gone before anything is
    printed; the command leaves with 141 (128 + SIGPIPE), no 'internal error', no traceback."""
    import subprocess

    from fault_helpers import pefttool_cmd

    proc = subprocess.Popen(pefttool_cmd("recipes"), cwd=Path(pefttool.__file__).parents[1], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_a_closed_pipe_in_process_returns_141(capsys, monkeypatch):
    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", Closed())
    assert main(["recipes"]) == 141
    assert capsys.readouterr().err == ""


def test_pipes_and_devices_are_never_read(capsys, tmp_path, tiny_classifier_dir):
    """Issue 30, item 4: a FIFO or /dev/zero as data.train is a validation problem (it blocked
    forever); an events.jsonl that is a FIFO or a link to /dev/zero reads as no events (pefttool
    runs hung, or grew to 13.7 GB), so the listing still ends."""
    import os

    fifo = tmp_path / "train.csv"
    os.mkfifo(fifo)
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={"data.train": str(fifo)})
    rc, out, err = cli(capsys, "validate", recipe)
    assert_clean_failure(rc, out, err, "data.train:", "is not a regular file (a pipe, device or socket)")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={"data.train": "/dev/zero"})
    rc, out, err = cli(capsys, "validate", recipe)
    assert_clean_failure(rc, out, err, "data.train: '/dev/zero' is not a regular file")

    root = tmp_path / "runs"
    for name, make in (("fifo", os.mkfifo), ("zero", lambda p: os.symlink("/dev/zero", p))):
        (root / name).mkdir(parents=True)
        (root / name / ".pefttool-run").write_text("{}")
        make(root / name / "events.jsonl")
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("pefttool runs hung")))
    signal.alarm(60)
    try:
        rc, out, err = cli(capsys, "runs", root)
    finally:
        signal.alarm(0)
    assert rc == 0 and "fifo" in out and "zero" in out


def test_the_tui_without_a_terminal_is_one_line(capsys, tmp_path):
    """Issue 30, item 7: `pefttool tui --attach RUN </dev/null >file` wrote escape codes forever."""
    (tmp_path / ".pefttool-run").write_text("{}")
    rc, out, err = cli(capsys, "tui", "--attach", str(tmp_path))
    assert_clean_failure(rc, out, err, "pefttool tui needs a terminal")


def test_attaching_to_a_folder_that_is_not_a_run_is_one_line(capsys, tmp_path):
    """Issue 28, item 11: `tui --attach runs` (the parent folder) waited for events forever."""
    (tmp_path / "runs" / "lora-1").mkdir(parents=True)
    (tmp_path / "runs" / "lora-1" / ".pefttool-run").write_text("{}")
    rc, out, err = cli(capsys, "tui", "--attach", str(tmp_path / "runs"))
    assert_clean_failure(rc, out, err, "is not a pefttool run folder", "the runs in it: lora-1")


class _Payload:
    """What a forged pickle carries: code run on unpickling (safe loading refuses it)."""

    def __reduce__(self):
        return (print, ("the payload ran",))


@pytest.mark.parametrize("name", ["random_states_0.pkl", "optimizer.bin"])
def test_a_forged_checkpoint_file_is_refused_in_one_line(name, capsys, tmp_path, tiny_classifier_dir):
    """Issue 30, item 11: a forged random_states_0.pkl was skipped silently (the resume exited 0
    without restoring the RNG), a forged optimizer.bin was a multi-line UnpicklingError. The
    forger fixed the manifest too, so only loading can tell."""
    import json

    import torch

    from pefttool.runfolder.checkpoints import _crc32, latest_checkpoint
    from test_run_integrity import interrupted_run

    recipe, run_dir = interrupted_run(tmp_path, tiny_classifier_dir, step=2)
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None
    torch.save({"state": _Payload()}, checkpoint / name)
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["files"][name] = [(checkpoint / name).stat().st_size, _crc32(checkpoint / name)]
    state_file.write_text(json.dumps(state))
    rc, out, err = cli(capsys, "resume", run_dir)
    assert_clean_failure(rc, out, err, name, f"Remove {checkpoint.name}")
    assert "the payload ran" not in out + err


def test_a_pickle_model_carrying_code_is_one_line_even_when_pickles_are_allowed(capsys, tmp_path,
                                                                               tiny_classifier_dir):
    """Issue 30, item 11: model.allow_pickle = true with a pytorch_model.bin that carries code:
    safe loading blocks it (it did), and the error is one line, not 'internal error'."""
    import torch

    model = write_pickle_only_copy(tiny_classifier_dir, tmp_path / "pickled")
    torch.save({"state": _Payload()}, model / "pytorch_model.bin")
    recipe = write_tiny_recipe(tmp_path, model, "lora", overrides={"model.allow_pickle": True})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "hold code or objects beyond tensors", "nothing was run")
    assert "the payload ran" not in out + err
