"""Several training files with weights (issue 27.2): `data.train = [{path, weight, ...}]`."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pefttool.data import prepare_data
from pefttool.engine import run_recipe
from pefttool.errors import RecipeError
from pefttool.models import load_tokenizer
from pefttool.recipe import load_recipe
from tiny_models import tiny_rows, write_tiny_recipe


def _second_source(tmp_path, n=40):
    """Other rows with other column names (question/answer), as a second source."""
    path = tmp_path / "other.jsonl"
    with path.open("w") as fh:
        for text, label in tiny_rows(n, seed=5):
            fh.write(json.dumps({"question": f"Other source: {text}?", "answer": label}) + "\n")
    return path


def _mixed(tmp_path, model_dir, weight=0.5, max_rows=None, **keys):
    base = write_tiny_recipe(tmp_path, model_dir, "lora", task="causal-lm", rows=48, overrides={
        "train.epochs": 1, "eval.before_training": False, **keys})
    import tomllib

    from tiny_models import to_toml

    data = tomllib.loads(base.read_text())
    other = {"path": str(_second_source(tmp_path)), "weight": weight, "prompt_column": "question",
             "response_column": "answer"}
    if max_rows:
        other["max_rows"] = max_rows
    data["data"]["train"] = [{"path": data["data"]["train"]}, other]
    base.write_text(to_toml(data))
    return base


def _prepared(recipe):
    logged = []
    data = prepare_data(recipe, load_tokenizer(recipe), log=logged.append)
    return data, logged


def test_each_source_reads_its_own_columns_and_goes_into_an_epoch_weight_times(tmp_path, tiny_causal_dir):
    recipe = load_recipe(_mixed(tmp_path, tiny_causal_dir, weight=2.0))
    data, logged = _prepared(recipe)
    sources = data.stats["train"]["sources"]
    assert [s["rows"] for s in sources] == [48, 40]
    # 88 rows, 25 % held out before weighting; the second source's training rows twice
    held = data.stats["train"]["held_out"]
    assert held == 22 and sources[0]["train_rows"] + sources[1]["train_rows"] == 66
    assert sources[0]["drawn"] == sources[0]["train_rows"] and sources[1]["drawn"] == 2 * sources[1]["train_rows"]
    assert len(data.train) == sources[0]["drawn"] + sources[1]["drawn"]
    line = next(m for m in logged if m.startswith("data train sources:"))
    assert f"other.jsonl {sources[1]['train_rows']} × 2 → {sources[1]['drawn']}" in line
    texts = Counter(tuple(r) for r in data.train["input_ids"])
    assert max(texts.values()) == 2                       # up-weighted rows appear twice...
    eval_rows = {tuple(r) for r in data.eval["input_ids"]}
    assert not eval_rows & set(texts)                     # ...and none of them is held out


def test_a_fraction_of_a_source_is_drawn_with_the_seed_and_max_rows_caps_it(tmp_path, tiny_causal_dir):
    recipe = load_recipe(_mixed(tmp_path, tiny_causal_dir, weight=0.5, max_rows=30))
    data, _ = _prepared(recipe)
    first, other = data.stats["train"]["sources"]
    assert other["rows"] == 30 and other["drawn"] == round(0.5 * other["train_rows"])
    again, _ = _prepared(recipe)
    assert list(again.train["input_ids"]) == list(data.train["input_ids"])   # seeded: the same epoch


def test_bad_source_lists_are_one_line(tmp_path, tiny_causal_dir):
    path = _mixed(tmp_path, tiny_causal_dir)
    text = path.read_text()
    with pytest.raises(RecipeError, match=r"data.train\[1\].path: '.*nowhere.jsonl' does not exist"):
        path.write_text(text.replace("other.jsonl", "nowhere.jsonl"))
        load_recipe(path)
    with pytest.raises(RecipeError, match="weight"):
        path.write_text(text.replace("weight = 0.5", "weight = -1.0"))
        load_recipe(path)


def test_a_mixed_run_trains_and_resumes_exactly(tmp_path, tiny_causal_dir):
    """Killed after step 3 (checkpoints every 2 steps): the resume ends as the run without
    the kill (the epoch's rows are fixed by the seed)."""
    import shutil

    import pefttool
    from fault_helpers import events_of, of_type
    from pefttool.errors import PefttoolError
    from pefttool.runfolder.checkpoints import TrainState, list_checkpoints

    class DieAfter:
        @pefttool.hookimpl
        def pefttool_step_end(self, event):
            if event.step == 3:
                raise RuntimeError("killed")

    keys = {"train.checkpoint_every": 2, "train.keep_checkpoints": 10, "train.max_steps": 6}
    straight = run_recipe(load_recipe(_mixed(tmp_path / "a", tiny_causal_dir, weight=1.5, **keys)))
    assert straight.status == "completed"
    recipe = load_recipe(_mixed(tmp_path / "b", tiny_causal_dir, weight=1.5, **keys))
    with pytest.raises(PefttoolError, match="killed"):
        run_recipe(recipe, observers=(DieAfter(),))
    run_dir = tmp_path / "b" / "runs" / "recipe"
    for newer in list_checkpoints(run_dir):
        if TrainState.from_file(newer / "trainer_state.json").global_step > 2:
            shutil.rmtree(newer)
    got = run_recipe(recipe, resume=True, run_dir=run_dir)
    assert got.status == "completed"
    want = {e.step: e.loss for e in of_type(events_of(straight.run_dir), "step")}
    resumed = [e for e in of_type(events_of(run_dir), "step") if e.step > 2]
    assert resumed and all(e.loss == pytest.approx(want[e.step], abs=1e-6) for e in resumed)
