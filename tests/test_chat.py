"""task.format = "chat": messages / ShareGPT rows through the chat template, the loss mask of
each data.train_on, bad conversations named by file and line, truncation drops counted, the
recipe checks, and the chatterbot-corpus → messages JSONL step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pefttool.data import IGNORE_INDEX, prepare_data
from pefttool.errors import DataError, RecipeError
from pefttool.recipe import validate_recipe
from tiny_models import TINY_CHAT_TEMPLATE, minilm_dir

# The tiny chat template writes "role: content\n", and "[SEP]" after an assistant's content.
CONV = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello friend"},
        {"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine thanks"}]
TOKENS = ["user", ":", "hi", "there", "assistant", ":", "hello", "friend", "[SEP]",
          "user", ":", "how", "are", "you", "assistant", ":", "fine", "thanks", "[SEP]"]
FILLER = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
          for i in range(8)]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(minilm_dir())
    t.eos_token, t.bos_token, t.chat_template = "[SEP]", "[CLS]", TINY_CHAT_TEMPLATE
    return t


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets-cache")


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_recipe(tmp_path, train="chat.jsonl", check_files=True, **data):
    return validate_recipe({"model": {"path": str(minilm_dir())},
                            "task": {"type": "causal-lm", "format": "chat"},
                            "data": {"train": train, **data}}, base_dir=tmp_path,
                           check_files=check_files)


def prep(tmp_path, tok, cache, rows=None, log=None, **data):
    if rows is not None:
        write_jsonl(tmp_path / "chat.jsonl", rows)
    return prepare_data(chat_recipe(tmp_path, **data), tok, log=log if log is not None else Log(),
                        cache_dir=cache)


def find_conv(data, tok):
    """The CONV row, wherever the seeded split put it."""
    for row in list(data.train) + list(data.eval):
        if tok.convert_ids_to_tokens(row["input_ids"]) == TOKENS:
            return row
    raise AssertionError("the multi-turn row is missing")


def learned(row) -> list[int]:
    return [i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX]


# ---------------------------------------------------------------------------- rendering + masks


@pytest.mark.parametrize("train_on, positions", [
    ("assistant", [6, 7, 8, 16, 17, 18]),  # both replies, each with its [SEP]
    ("last_assistant", [16, 17, 18]),
    ("all", list(range(19))),
])
def test_loss_falls_exactly_on_the_tokens_train_on_names(tmp_path, tok, cache, train_on, positions):
    data = prep(tmp_path, tok, cache, [{"messages": CONV}] + [{"messages": m} for m in FILLER],
                train_on=train_on, max_length=64)
    row = find_conv(data, tok)
    assert learned(row) == positions
    assert [row["labels"][i] for i in positions] == [row["input_ids"][i] for i in positions]
    assert row["attention_mask"] == [1] * len(TOKENS)


def test_sharegpt_rows_render_like_messages(tmp_path, tok, cache):
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    sharegpt = [{"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conv]}
                for conv in [CONV, *FILLER]]
    a = prep(tmp_path, tok, cache, [{"messages": c} for c in [CONV, *FILLER]])
    write_jsonl(tmp_path / "sg.jsonl", sharegpt)
    b = prep(tmp_path, tok, cache, train="sg.jsonl")
    assert list(a.train) == list(b.train) and list(a.eval) == list(b.eval)
    assert learned(find_conv(b, tok)) == [6, 7, 8, 16, 17, 18]


def test_a_system_turn_is_rendered_and_never_learned(tmp_path, tok, cache):
    conv = [{"role": "system", "content": "be brief"}, *CONV]
    data = prep(tmp_path, tok, cache, [{"messages": conv}] + [{"messages": m} for m in FILLER])
    row = next(r for r in list(data.train) + list(data.eval) if len(r["input_ids"]) > 19)
    tokens = tok.convert_ids_to_tokens(row["input_ids"])
    assert tokens[:4] == ["system", ":", "be", "brief"] and tokens[4:] == TOKENS
    assert learned(row) == [p + 4 for p in [6, 7, 8, 16, 17, 18]]


def test_a_named_messages_column_and_parquet(tmp_path, tok, cache):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"dialog": [CONV, *FILLER], "id": list(range(9))}), tmp_path / "c.parquet")
    data = prep(tmp_path, tok, cache, train="c.parquet", messages_column="dialog")
    assert learned(find_conv(data, tok)) == [6, 7, 8, 16, 17, 18]
    with pytest.raises(DataError, match=r"no column 'messages'.*for data\.messages_column") as exc:
        prep(tmp_path, tok, cache, train="c.parquet", messages_column="messages")
    assert "dialog" in str(exc.value)
    with pytest.raises(DataError, match=r"no 'messages' or 'conversations' column.*set "
                                        r"data\.messages_column"):
        prep(tmp_path, tok, cache, train="c.parquet")


def test_eval_prompts_are_the_conversation_before_its_last_reply(tmp_path, tok, cache):
    data = prep(tmp_path, tok, cache, [{"messages": CONV}] + [{"messages": m} for m in FILLER],
                eval_fraction=0.5)
    assert data.eval_prompts and len(data.eval_prompts) == len(data.eval) == len(data.eval_answers)
    for prompt, answer, ids, row in zip(data.eval_prompts, data.eval_answers, data.eval_prompt_ids,
                                        data.eval):
        assert prompt.endswith("assistant: ") and answer in tok.decode(row["input_ids"])
        assert ids == row["input_ids"][:len(ids)] == tok(prompt, add_special_tokens=False)["input_ids"]
        assert learned(row)[-1] == len(row["input_ids"]) - 1 and len(ids) == learned(row)[-3]


# ---------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize("messages, what", [
    ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}],
     r"message 2 has role 'tool', which the chat template does not know"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}],
     r"message 2 \(assistant\) is empty"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
      {"role": "user", "content": "and?"}],
     r"ends with a user turn \(message 3\), not an assistant turn"),
    ([], r"has no messages"),
    ("just text", r"is text, not a list of messages"),
])
def test_a_bad_conversation_is_named_by_file_and_line(tmp_path, tok, cache, messages, what):
    rows = [{"messages": m} for m in FILLER[:3]] + [{"messages": messages}] + \
        [{"messages": m} for m in FILLER[3:]]
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, rows)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path / 'chat.jsonl'}: data row 4, column 'messages'")
    assert __import__("re").search(what, msg), msg
    assert 'data.on_bad_rows = "skip"' in msg
    log = Log()
    data = prep(tmp_path, tok, cache, rows, log=log, on_bad_rows="skip")
    assert data.stats["train"]["dropped_bad"] == 1
    assert len(data.train) + len(data.eval) == len(FILLER)
    assert any("skipped 1 bad row(s)" in line and "data row 4" in line for line in log)


def test_a_turn_the_template_leaves_out_is_a_bad_row(tmp_path, tok, cache):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(minilm_dir())
    t.eos_token = "[SEP]"
    # A template that silently skips system turns, and one that refuses them.
    t.chat_template = TINY_CHAT_TEMPLATE.replace("{% for message in messages %}",
                                                 "{% for message in messages if message.role != 'system' %}")
    rows = [{"messages": [{"role": "system", "content": "be brief"}, *CONV]}] + \
        [{"messages": m} for m in FILLER]
    with pytest.raises(DataError, match=r"data row 1, column 'messages' message 1 \(system\) is "
                                        r"left out by the chat template"):
        prep(tmp_path, t, cache, rows)
    t.chat_template = ("{% if messages[0].role == 'system' %}{{ raise_exception('System role not "
                       "supported') }}{% endif %}" + TINY_CHAT_TEMPLATE)
    with pytest.raises(DataError, match=r"data row 1, column 'messages' the chat template cannot "
                                        r"render it \(.*System role not supported\)"):
        prep(tmp_path, t, cache, rows)


def test_a_tokenizer_without_a_chat_template_is_one_line(tmp_path, cache):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(minilm_dir())
    with pytest.raises(DataError, match=r"has no chat template.*task.format = \"chat\""):
        prep(tmp_path, t, cache, [{"messages": m} for m in FILLER])


# ---------------------------------------------------------------------------- truncation


def test_rows_whose_replies_are_cut_off_are_dropped_and_counted(tmp_path, tok, cache):
    long_user = " ".join(["word"] * 40)
    rows = [{"messages": [{"role": "user", "content": f"{long_user} {i}"},
                          {"role": "assistant", "content": "ok"}]} for i in range(3)]
    rows += [{"messages": m} for m in FILLER]
    rows += [{"messages": CONV}]
    log = Log()
    data = prep(tmp_path, tok, cache, rows, log=log, max_length=16, eval_fraction=0.2)
    dropped = data.stats["train"]["dropped_truncated"] + data.stats["eval"]["dropped_truncated"]
    assert dropped == 3
    assert len(data.train) + len(data.eval) == len(FILLER) + 1
    assert any("too long for max_length" in line for line in log)
    # CONV (19 tokens) is cut to 16: its first reply still teaches, so it is kept, truncated
    row = next(r for r in list(data.train) + list(data.eval) if len(r["input_ids"]) == 16)
    assert learned(row) == [6, 7, 8]
    assert data.stats["train"]["truncated"] + data.stats["eval"]["truncated"] == 1
    # last_assistant: the first reply no longer counts, so CONV goes too
    data = prep(tmp_path, tok, cache, rows, max_length=16, eval_fraction=0.2,
                train_on="last_assistant")
    assert data.stats["train"]["dropped_truncated"] + data.stats["eval"]["dropped_truncated"] == 4


# ---------------------------------------------------------------------------- recipe


@pytest.mark.parametrize("task, data, expected", [
    ({"type": "causal-lm", "format": "chat"}, {"train_on": "everything"},
     r"data\.train_on: .*'assistant', 'last_assistant' or 'all'.*\(got 'everything'\)"),
    ({"type": "classification", "labels": ["a", "b"], "format": "chat"}, {},
     r"task\.format: 'chat', but a classification task reads a text and a label per row .*; remove task\.format, or set task\.type = \"causal-lm\""),
    ({"type": "causal-lm", "format": "chat"}, {"chat_template": False},
     r"data\.chat_template: false, but task\.format = \"chat\".*set it to true"),
    ({"type": "causal-lm", "format": "chat"}, {"prompt_template": "Q: {q}"},
     r"data\.prompt_template: 'Q: \{q\}' does not apply to task\.format = \"chat\".*remove it"),
    ({"type": "causal-lm"}, {"train_on": "all"},
     r"data\.train_on: 'all' applies to task\.format = \"chat\" only \(task\.format is "
     r"'instruction'\); remove it or set task\.format = \"chat\""),
    ({"type": "causal-lm", "format": "text"}, {"messages_column": "dialog"},
     r"data\.messages_column: 'dialog' applies to task\.format = \"chat\" only"),
])
def test_recipe_problems_name_key_value_and_fix(tmp_path, task, data, expected):
    with pytest.raises(RecipeError) as exc:
        validate_recipe({"model": {"path": "m"}, "task": task, "data": {"train": "x.jsonl", **data}},
                        base_dir=tmp_path, check_files=False)
    assert __import__("re").search(expected, str(exc.value)), str(exc.value)


# ---------------------------------------------------------------------------- chatterbot step


def test_chatterbot_corpus_becomes_messages_jsonl(tmp_path):
    pytest.importorskip("yaml")
    from pefttool.data import chatterbot

    try:
        chatterbot.corpus_dir()
    except chatterbot.CorpusMissing:
        pytest.skip("chatterbot-corpus is not installed")
    out = tmp_path / "chat.jsonl"
    assert chatterbot.main([str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    keys = {json.dumps(r["messages"]) for r in rows}
    assert len(keys) == len(rows) > 800  # deduplicated: the corpus repeats many pairs
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles[-1] == "assistant" and all(m["content"].strip() for m in r["messages"])
        assert roles == (["user", "assistant"] * len(roles))[: len(roles)]
    assert max(len(r["messages"]) for r in rows) > 4  # real multi-turn conversations
    before = out.read_bytes()
    assert chatterbot.main([str(out)]) == 0 and out.read_bytes() == before  # deterministic


# ---------------------------------------------------------------------------- a whole run


def test_a_chat_run_reports_eval_loss_before_and_after_and_writes_samples(tmp_path, tiny_causal_dir):
    from pefttool.engine import run_recipe
    from pefttool.events import EvalEvent, read_events
    from pefttool.recipe import load_recipe
    from tiny_models import write_tiny_recipe

    convs = [[{"role": "user", "content": f"is {w} good or bad"},
              {"role": "assistant", "content": "good" if i % 2 else "bad"},
              {"role": "user", "content": "sure"}, {"role": "assistant", "content": "yes sure"}]
             for i, w in enumerate(f"thing{i}" for i in range(24))]
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in convs])
    path = write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", task="causal-lm", overrides={
        "task.format": "chat", "data.train": str(tmp_path / "chat.jsonl"), "data.prompt_column": None,
        "data.response_column": None, "train.epochs": 1, "eval.samples": 2, "eval.max_new_tokens": 3})
    result = run_recipe(load_recipe(path))
    evals = [e for e in read_events(result.run_dir / "events.jsonl") if isinstance(e, EvalEvent)]
    assert set(evals[0].metrics) == {"eval_loss", "perplexity"} and evals[0].before
    assert evals[-1].metrics["eval_loss"] < evals[0].metrics["eval_loss"]
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2
    for s in samples:
        assert s["prompt"].endswith("assistant: ") and s["reference"] == "yes sure"
        assert {"before", "after", "after_step"} <= set(s) and s["after_step"] == result.best_step


def test_a_resolved_recipe_with_the_defaults_written_out_validates_again(tmp_path):
    for task in ({"type": "causal-lm"}, {"type": "causal-lm", "format": "chat"}):
        first = validate_recipe({"model": {"path": "m"}, "task": task, "data": {"train": "x.jsonl"}},
                                base_dir=tmp_path, check_files=False)
        again = validate_recipe(first.to_dict(), base_dir=tmp_path, check_files=False)
        assert again.data.train_on == "assistant" and again.task.format == first.task.format


# ---------------------------------------------------------------- system prompt, template file


def test_system_prompt_becomes_each_conversations_system_turn(tmp_path, tok, cache):
    rows = [{"messages": CONV}] + [{"messages": m} for m in FILLER]
    data = prep(tmp_path, tok, cache, rows, system_prompt="be brief", max_length=64)
    texts = [tok.decode(r["input_ids"]) for r in list(data.train) + list(data.eval)]
    assert all(t.startswith("system : be brief") for t in texts), texts[0]
    own = [{"role": "system", "content": "my own"}, *FILLER[0]]
    data = prep(tmp_path, tok, cache, [{"messages": own}] + rows[1:], system_prompt="be brief")
    texts = [tok.decode(r["input_ids"]) for r in list(data.train) + list(data.eval)]
    assert sum(t.startswith("system : my own") for t in texts) == 1   # a row's own system turn stays
    # the loss stays on the replies only
    row = next(r for r in list(data.train) + list(data.eval)
               if tok.decode(r["input_ids"]).startswith("system : be brief"))
    learned_text = tok.decode([row["input_ids"][i] for i in learned(row)])
    assert "brief" not in learned_text and learned_text.startswith("answer")


def test_a_chat_template_file_replaces_the_models_template(tmp_path, tiny_causal_dir):
    from pefttool.errors import PefttoolError
    from pefttool.inspection import inspect_recipe
    from pefttool.recipe import load_recipe
    from tiny_models import write_tiny_recipe

    template = tmp_path / "turns.jinja"
    template.write_text("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}"
                        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}"
                        "{% if add_generation_prompt %}<assistant> {% endif %}", encoding="utf-8")
    write_jsonl(tmp_path / "c.jsonl", [{"messages": CONV}] + [{"messages": m} for m in FILLER])
    recipe_path = write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", "causal-lm", overrides={
        "task.format": "chat", "data.train": str(tmp_path / "c.jsonl"), "data.prompt_column": None,
        "data.response_column": None, "data.chat_template": "turns.jinja"})
    preview = inspect_recipe(load_recipe(recipe_path), rows=1)
    assert preview.rows[0].text.startswith("< user > question") or "< user >" in preview.rows[0].text
    # a template that does not parse, and one that is missing: one line each
    template.write_text("{% for m in messages %}", encoding="utf-8")
    with pytest.raises(PefttoolError, match=r"data.chat_template: .*turns.jinja' is not a valid Jinja template"):
        inspect_recipe(load_recipe(recipe_path), rows=1)
    template.unlink()
    with pytest.raises(PefttoolError, match=r"data.chat_template: 'turns.jinja' does not exist"):
        load_recipe(recipe_path)
