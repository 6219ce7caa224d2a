"""The plugin's own tests: run them with `pytest` after `pip install -e .[test]`."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys

import pytest
from pefttool_regression import pearson, rmse, spearman

from pefttool.testing import NEGATIVE_WORDS, POSITIVE_WORDS, THINGS, check_task


def write_scores(path, n=64, seed=0):
    """Texts of two adjectives; the score counts the good ones minus the bad ones (-2..2), so
    a model that reads the words can learn it."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["text", "score"])
        for _ in range(n):
            words = [rng.choice(POSITIVE_WORDS if rng.random() < 0.5 else NEGATIVE_WORDS) for _ in range(2)]
            score = sum(1 if w in POSITIVE_WORDS else -1 for w in words)
            out.writerow([f"a {words[0]} {rng.choice(THINGS)}, {words[1]}", score])
    return path


def test_the_metrics_match_their_definitions():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None          # constant: undefined, not 0
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)   # monotone, not linear
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)    # ties share a rank
    assert rmse([1, 2], [1, 4]) == pytest.approx(2 ** 0.5)


@pytest.mark.parametrize("strategy", ["lora", "qlora"])
def test_regression_trains_evaluates_predicts_and_exports(tmp_path, strategy):
    data = write_scores(tmp_path / "scores.csv", n=128)
    result = check_task("regression", tmp_path, data, strategy=strategy,
                        data_keys={"label_column": "score"}, task={"decimals": 2},
                        prompts=["a good film, great", "a bad plot, awful"], epochs=6)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert {"pearson", "spearman", "rmse", "eval_loss"} <= set(metrics["best_metrics"])
    assert metrics["best_metrics"]["pearson"] > 0.5, metrics["best_metrics"]
    # the CLI prints numbers, with the recipe's decimals
    done = subprocess.run([sys.executable, "-m", "pefttool.cli", "predict", str(result.run_dir),
                           "a good film, great", "a bad plot, awful"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    values = [float(line.split("\t")[0]) for line in done.stdout.splitlines()]
    assert len(values) == 2 and values[0] > values[1], done.stdout
    assert all(len(line.split("\t")[0].split(".")[1]) == 2 for line in done.stdout.splitlines())
    if strategy == "lora":   # the TUI's dashboard shows the task's metrics like any other
        assert {"pearson", "spearman", "rmse"} <= set(eval_table_columns(result.run_dir))
        # plan measures a step with the task's labels; inspect shows a row and its number
        recipe = str(tmp_path / "tiny-regression-lora.toml")
        for command in (["plan", recipe], ["inspect", recipe, "--rows", "1", "--json"]):
            done = subprocess.run([sys.executable, "-m", "pefttool.cli", *command],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{command[0]}: {done.stderr}"
        label = json.loads(done.stdout)["rows"][0]["label"]
        assert float(label) in (-2.0, 0.0, 2.0), label


def eval_table_columns(run_dir):
    """The column names of the evaluation table on the TUI's dashboard of a finished run."""
    import asyncio

    from pefttool.tui.app import PefttoolApp
    from pefttool.tui.widgets.eval_table import EvalTable

    async def look():
        app = PefttoolApp(attach=run_dir, runs_root=run_dir.parent)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                tables = app.screen.query(EvalTable)
                if tables and len(tables.first().columns) > 3:
                    break
            return [str(c.label) for c in app.screen.query_one(EvalTable).columns.values()]

    return asyncio.run(look())
