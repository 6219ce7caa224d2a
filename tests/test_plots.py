"""Curves as pictures: plots.png at the end of every run, `pefttool plot RUN_DIR...`, and
TensorBoard event files when tensorboard is installed. All drawn from events, never by the engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pefttool.events import EndEvent, EvalEvent, StartEvent, StepEvent, read_events
from pefttool.plots import TensorBoardWriter, _unique_names, plot_runs, read_curves
from test_faults import assert_clean_failure, cli
from tiny_models import write_tiny_recipe

PNG = b"\x89PNG\r\n\x1a\n"
QUICK = {"train.max_steps": 3, "train.log_every": 1}


class FakeWriter:
    """Stands in for torch's SummaryWriter: records what it is asked to write."""

    made: list["FakeWriter"] = []

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_classifier_dir):
    """A run through `pefttool run` (the headless path every CLI and TUI run takes), with a
    stand-in TensorBoard writer."""
    from _pytest.monkeypatch import MonkeyPatch

    from pefttool.cli import main

    folder = tmp_path_factory.mktemp("plotted")
    recipe = write_tiny_recipe(folder, tiny_classifier_dir, "lora", overrides=QUICK)
    with MonkeyPatch.context() as mp:
        FakeWriter.made.clear()
        mp.setattr("pefttool.plots.tensorboard_writer_class", lambda: FakeWriter)
        assert main(["run", str(recipe), "--quiet"]) == 0
    return folder / "runs" / "recipe", list(FakeWriter.made)


def test_a_run_ends_with_a_png_of_its_curves(finished):
    run_dir, _ = finished
    width, height = png_size(run_dir / "plots.png")
    assert width > height > 200
    events = list(read_events(run_dir / "events.jsonl"))
    curves = read_curves(run_dir)
    assert curves.loss == [(e.step, e.loss) for e in events if isinstance(e, StepEvent)]
    assert curves.lr == [(e.step, e.lr) for e in events if isinstance(e, StepEvent)]
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert curves.metric == "accuracy"
    assert curves.evals["accuracy"] == [(e.step, e.metrics["accuracy"]) for e in evals]
    assert evals[0].step == 0 and evals[0].before   # the baseline is on the curve


def test_tensorboard_gets_every_step_and_eval_of_the_run(finished):
    run_dir, writers = finished
    (writer,) = writers
    assert Path(writer.log_dir) == run_dir / "tensorboard" and writer.closed
    events = list(read_events(run_dir / "events.jsonl"))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [(s, v) for tag, v, s in writer.scalars if tag == "train/loss"] == [(e.step, e.loss) for e in steps]
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert [(s, v) for tag, v, s in writer.scalars if tag == "eval/accuracy"] == \
        [(e.step, e.metrics["accuracy"]) for e in evals]


def test_real_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra (pefttool[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = TensorBoardWriter()
    start = StartEvent(run_dir=str(tmp_path), recipe={}, strategy="lora", total_steps=2, steps_per_epoch=2,
                       epochs=1, params_total=10, params_trainable=1, model_memory_mb=1.0, device="cpu")
    writer.pefttool_run_start(start)
    for step, loss in ((1, 0.9), (2, 0.5)):
        writer.pefttool_step_end(StepEvent(step=step, total_steps=2, epoch=step / 2, loss=loss, lr=1e-3,
                                           tokens_per_s=10.0, samples_per_s=1.0, elapsed_s=1.0, eta_s=0.0,
                                           rss_mb=1.0))
    writer.pefttool_eval_end(EvalEvent(step=2, epoch=1.0, metrics={"accuracy": 0.75}, metric="accuracy",
                                       value=0.75, best=0.75, is_best=True, bad_evals=0))
    writer.pefttool_run_end(EndEvent(status="completed", step=2, duration_s=1.0))
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(s.step, round(s.value, 4)) for s in acc.Scalars("train/loss")] == [(1, 0.9), (2, 0.5)]
    assert [s.value for s in acc.Scalars("eval/accuracy")] == [0.75]


def test_several_runs_on_one_chart(finished, tmp_path, tiny_classifier_dir, capsys):
    run_dir, _ = finished
    other = write_tiny_recipe(tmp_path, tiny_classifier_dir, "full", overrides=QUICK)
    rc, out, err = cli(capsys, "run", other, "--quiet")
    assert rc == 0, err
    out_png = tmp_path / "both.png"
    rc, out, err = cli(capsys, "plot", run_dir, tmp_path / "runs" / "recipe", "--out", out_png)
    assert rc == 0, err
    assert out.strip() == f"plot: {out_png}" and png_size(out_png)[0] > 0
    # both runs are called "recipe": the legend tells them apart by their folders
    assert _unique_names(["recipe", "recipe"], [Path("/a/x/runs/recipe"), Path("/b/y/runs/recipe")]) == \
        ["recipe (x/runs/recipe)", "recipe (y/runs/recipe)"]
    assert _unique_names(["a", "b"], [Path("/r/1"), Path("/r/2")]) == ["a", "b"]


def test_without_matplotlib_a_run_still_succeeds_and_says_so_once(tmp_path, tiny_classifier_dir, capsys,
                                                                   monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)   # as if not installed
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides=QUICK)
    rc, out, err = cli(capsys, "run", recipe, "--quiet")
    assert rc == 0, err
    assert [line for line in err.splitlines() if "plots.png" in line] == [
        "note: plots.png skipped: matplotlib is not installed (pip install matplotlib)"]
    run_dir = tmp_path / "runs" / "recipe"
    assert not (run_dir / "plots.png").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".plots")]
    rc, out, err = cli(capsys, "plot", run_dir)
    assert_clean_failure(rc, out, err, "pip install matplotlib")


def test_a_failing_picture_never_fails_the_run(tmp_path, tiny_classifier_dir, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("pefttool.plots.plot_runs", broken)
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides=QUICK)
    rc, out, err = cli(capsys, "run", recipe, "--quiet")
    assert rc == 0
    assert "warning: plots.png not written (RuntimeError: disk full)" in err
    metrics = json.loads((tmp_path / "runs" / "recipe" / "metrics.json").read_text())
    assert metrics["status"] == "completed"


def test_bad_inputs_to_plot_are_one_line(finished, tmp_path, capsys):
    run_dir, _ = finished
    rc, out, err = cli(capsys, "plot", tmp_path)
    assert_clean_failure(rc, out, err, "is not a pefttool run")
    rc, out, err = cli(capsys, "plot", run_dir, "--out", tmp_path / "curves.jpg")
    assert_clean_failure(rc, out, err, "does not end in .png")
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"the user's picture")
    rc, out, err = cli(capsys, "plot", run_dir, "--out", mine)
    assert_clean_failure(rc, out, err, "exists")
    assert mine.read_bytes() == b"the user's picture"
    rc, out, err = cli(capsys, "plot", run_dir, "--out", tmp_path / "no" / "such" / "dir.png")
    assert_clean_failure(rc, out, err, "does not exist")
