"""`pefttool inspect RECIPE`: the rows as the model will see them, from the run's own data
pipeline, with the tokenizer only (no model weights load)."""

from __future__ import annotations

import json

import pytest

from pefttool.data.common import IGNORE_INDEX
from pefttool.inspection import inspect_recipe, length_stats
from pefttool.recipe import load_recipe
from test_faults import assert_clean_failure, cli
from tiny_models import write_tiny_recipe


@pytest.fixture(autouse=True)
def no_model_weights(monkeypatch):
    """Any attempt to load a model fails the test: inspect needs the tokenizer only."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("inspect loaded model weights")

    for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModel"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)
    monkeypatch.setattr("pefttool.models.load_model", refuse)


def test_an_instruction_row_shows_the_response_as_the_only_loss(tmp_path, tiny_causal_dir):
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", "causal-lm"))
    preview = inspect_recipe(recipe, rows=2)
    assert len(preview.rows) == 2
    tok_eos = "[SEP]"
    for row in preview.rows:
        (prompt, prompt_loss), (answer, answer_loss) = row.spans
        assert not prompt_loss and answer_loss
        assert "positive or negative?" in prompt and prompt.rstrip().endswith("assistant :")
        assert answer.split()[0] in ("positive", "negative") and answer.endswith(tok_eos)
        assert row.loss_tokens == 2 and row.tokens == len(row.input_ids)   # the label word + eos
    text = cli_text(tmp_path, "--rows", "1")
    assert "[[positive [SEP]]]" in text or "[[negative [SEP]]]" in text
    assert "1 carry loss" not in text and "2 carry loss" in text


def cli_text(tmp_path, *args):
    import contextlib
    import io

    from pefttool.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", str(tmp_path / "recipe.toml"), *args]) == 0
    return out.getvalue()


def test_plain_text_rows_carry_loss_on_every_token(tmp_path, tiny_causal_dir):
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", "causal-lm", overrides={
        "task.format": "text", "data.text_column": "prompt", "data.prompt_column": None,
        "data.response_column": None, "eval.metric": None}))
    (row,) = inspect_recipe(recipe, rows=1).rows
    assert row.loss_tokens == row.tokens and row.spans == [(row.text, True)]


def test_lengths_and_truncation_cover_every_row(tmp_path, tiny_causal_dir):
    path = write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", "causal-lm")
    roomy = inspect_recipe(load_recipe(path), rows=0)
    assert roomy.rows == []
    train = roomy.lengths["train"]
    assert (train.rows, train.truncated, train.at_max_length) == (48, 0, 0)
    assert train.min <= train.median <= train.p95 <= train.max < 48
    # a max_length that cuts every response after its first token (the prompts are 19-21 tokens)
    tight = inspect_recipe(load_recipe(path, [f"data.max_length={train.max - 1}"]), rows=48)
    stats = tight.lengths["train"]
    cut = sum(1 for r in tight.rows if r.tokens == train.max - 1)
    assert stats.truncated >= 1 and stats.at_max_length == cut
    assert stats.max == train.max - 1


def test_a_classification_row_names_its_label(tmp_path, tiny_classifier_dir, capsys):
    path = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    preview = inspect_recipe(load_recipe(path), rows=3)
    assert all(r.label in ("negative", "positive") and r.loss_tokens == 0 for r in preview.rows)
    assert preview.rows[0].text.startswith("[CLS]") and preview.lengths["train"].truncated is None
    rc, out, err = cli(capsys, "inspect", path, "--rows", "1", "--json", "--set", "data.max_length=9")
    assert rc == 0, err
    data = json.loads(out)
    assert data["max_length"] == 9 and len(data["rows"]) == 1
    assert data["lengths"]["train"]["max"] <= 9 and data["lengths"]["train"]["at_max_length"] > 0
    assert data["cleaning"]["train"]["kept"] == data["lengths"]["train"]["rows"]
    assert data["rows"][0]["label"] in ("negative", "positive")


def test_length_stats_use_nearest_rank_percentiles():
    stats = length_stats(list(range(1, 101)), max_length=100, counts={"truncated": 3})
    assert (stats.min, stats.median, stats.p95, stats.max, stats.at_max_length, stats.truncated) == \
        (1, 50.5, 95, 100, 1, 3)


def test_the_loss_marks_follow_the_encoders_labels_whatever_they_are(tmp_path, tiny_causal_dir):
    """Chat data (another format) masks several spans: the marks follow the labels as given."""
    from pefttool.inspection import loss_spans
    from pefttool.models import load_tokenizer

    tok = load_tokenizer(load_recipe(write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", "causal-lm")))
    ids = tok("one two three four five", add_special_tokens=False)["input_ids"]
    labels = [IGNORE_INDEX, ids[1], IGNORE_INDEX, ids[3], ids[4]]
    assert loss_spans(tok, ids, labels) == [("one", False), ("two", True), ("three", False),
                                            ("four five", True)]


def test_bad_inputs_to_inspect_are_one_line(tmp_path, tiny_classifier_dir, capsys):
    rc, out, err = cli(capsys, "inspect", tmp_path / "nope.toml")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    path = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    rc, out, err = cli(capsys, "inspect", path, "--rows", "-1")
    assert_clean_failure(rc, out, err, "--rows: -1")
    rc, out, err = cli(capsys, "inspect", path, "--set", "data.text_column=nope")
    assert_clean_failure(rc, out, err, "nope")


def _chat_recipe(tmp_path, tiny_causal_dir):
    """A chat recipe on 40 conversations, every fifth one with two assistant replies."""
    rows = []
    for i in range(40):
        messages = [{"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": f"answer {i}"}]
        if i % 5 == 0:
            messages += [{"role": "user", "content": f"and then {i}"},
                         {"role": "assistant", "content": f"more {i}"}]
        rows.append({"messages": messages})
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return load_recipe(write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", "causal-lm", overrides={
        "task.format": "chat", "data.train": str(data), "data.prompt_column": None,
        "data.response_column": None}))


def test_inspect_picks_rows_by_start_random_sample_or_several_turns(tmp_path, tiny_causal_dir):
    recipe = _chat_recipe(tmp_path, tiny_causal_dir)
    first = inspect_recipe(recipe, rows=3)
    assert [r.index for r in first.rows] == [0, 1, 2]
    later = inspect_recipe(recipe, rows=2, start=5)
    assert [r.index for r in later.rows] == [5, 6]
    assert later.rows[0].input_ids == inspect_recipe(recipe, rows=6).rows[5].input_ids
    sample = inspect_recipe(recipe, rows=4, seed=1)
    assert len(sample.rows) == 4 and sample.rows != first.rows
    assert [r.index for r in sample.rows] == [r.index for r in inspect_recipe(recipe, rows=4, seed=1).rows]
    multi = inspect_recipe(recipe, rows=3, multi_turn=True)
    assert len(multi.rows) == 3
    for row in multi.rows:
        assert sum(1 for _, loss in row.spans if loss) == 2   # two replies carry loss
        assert "and then" in row.text
    text = cli_text(tmp_path, "--rows", "1", "--start", "4")
    assert "--- train row 5:" in text


def test_inspect_row_choice_errors_are_one_line(tmp_path, tiny_classifier_dir, capsys):
    write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    rc, out, err = cli(capsys, "inspect", tmp_path / "recipe.toml", "--multi-turn")
    assert_clean_failure(rc, out, err, "--multi-turn: classification rows have no turns")
    rc, out, err = cli(capsys, "inspect", tmp_path / "recipe.toml", "--start", "999")
    assert_clean_failure(rc, out, err, "--start: 999 is past the last train row (48 rows)")
    rc, out, err = cli(capsys, "inspect", tmp_path / "recipe.toml", "--start", "-1")
    assert_clean_failure(rc, out, err, "--start: -1 is negative")
