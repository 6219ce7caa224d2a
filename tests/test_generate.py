"""`pefttool generate` and `pefttool.generate.generate`: replies from finished causal-LM runs of
every built-in strategy and of a third-party one, prompted exactly as training rendered them."""

from __future__ import annotations

import io
import json
import threading
import types

import pytest
import torch

from pefttool.engine import run_recipe
from pefttool.generate import GenerationOptions, chat, generate, prompt_ids
from pefttool.hookspecs import hookimpl
from pefttool.recipe import load_recipe
from pefttool.strategy import Strategy, StrategyOptions
from pefttool.trained import load_trained
from test_faults import assert_clean_failure, cli
from tiny_models import write_tiny_recipe

PROMPT = "Is this review positive or negative? a lovely film, truly great"


class _IA3(Strategy):
    """A third-party strategy (as a plugin would ship it) that saves a PEFT IA³ adapter."""

    name = "thirdparty_ia3"
    description = "test: IA3 through PEFT"
    Options = StrategyOptions

    def wrap(self, model, recipe, options):
        from peft import IA3Config

        import pefttool

        return pefttool.peft_wrap(model, IA3Config(target_modules=["q_proj", "v_proj"],
                                                   feedforward_modules=[]), recipe)

    def save(self, model, out_dir, recipe, options):
        model.save_pretrained(out_dir, safe_serialization=True)


@pytest.fixture(scope="module")
def third_party():
    from pefttool.plugins import get_plugin_host

    plugin = types.SimpleNamespace(pefttool_register_strategies=hookimpl(
        lambda register: register(_IA3())))
    host = get_plugin_host()
    host.register(plugin, "thirdparty-ia3-test")
    yield
    host.unregister("thirdparty-ia3-test")


@pytest.fixture(scope="module")
def causal_runs(tmp_path_factory, tiny_causal_dir, third_party):
    """A short finished causal-lm run of each built-in strategy and of the third-party one."""
    out = {}
    for strategy in ("lora", "full", "qlora", "thirdparty_ia3"):
        folder = tmp_path_factory.mktemp(f"gen-{strategy}")
        recipe = load_recipe(write_tiny_recipe(folder, tiny_causal_dir, strategy, "causal-lm", overrides={
            "train.max_steps": 2, "eval.before_training": False}))
        out[strategy] = run_recipe(recipe).run_dir
    return out


@pytest.fixture(scope="module")
def loaded_lora(causal_runs):
    return load_trained(causal_runs["lora"])


def test_a_prompt_is_rendered_exactly_as_training_rendered_it(loaded_lora, causal_runs):
    from pefttool.data import prepare_data

    recipe = loaded_lora.recipe
    data = prepare_data(recipe, loaded_lora.tokenizer, log=lambda _: None)
    trained_on = {tuple(ids) for ids in data.eval_prompt_ids}
    import csv

    with open(recipe.data.train, newline="", encoding="utf-8") as fh:
        raw = [row["prompt"] for row in csv.DictReader(fh)]
    ours = {tuple(prompt_ids(loaded_lora, p)) for p in raw}
    assert trained_on and trained_on <= ours   # every eval prompt, token for token
    # a one-message conversation is the same prompt through the chat template
    assert prompt_ids(loaded_lora, [{"role": "user", "content": raw[0]}]) == prompt_ids(loaded_lora, raw[0])


def test_greedy_is_the_models_own_greedy_reply_and_a_seed_repeats_a_sample(loaded_lora):
    tok, model = loaded_lora.tokenizer, loaded_lora.model
    ids = torch.tensor([prompt_ids(loaded_lora, PROMPT)])
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                  do_sample=False, pad_token_id=tok.pad_token_id)
    want = tok.decode(expected[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert generate(loaded_lora, PROMPT, greedy=True, max_new_tokens=6) == want
    first = generate(loaded_lora, PROMPT, seed=3, temperature=1.0, max_new_tokens=8)
    assert generate(loaded_lora, PROMPT, seed=3, temperature=1.0, max_new_tokens=8) == first


def test_a_reply_streams_piece_by_piece_and_a_stop_ends_it(loaded_lora):
    pieces: list[str] = []
    reply = generate(loaded_lora, PROMPT, greedy=True, max_new_tokens=8, on_text=pieces.append)
    assert pieces and "".join(pieces).strip() == reply
    stop = threading.Event()
    stop.set()  # as Ctrl-C (or the TUI's stop key) would: the reply ends after the current token
    cut = generate(loaded_lora, PROMPT, greedy=True, max_new_tokens=50, stop=stop)
    full = generate(loaded_lora, PROMPT, greedy=True, max_new_tokens=50)
    assert full.startswith(cut) and len(cut) < len(full)
    stopped: list[str] = []
    generate(loaded_lora, PROMPT, greedy=True, max_new_tokens=50, stop=stop, on_text=stopped.append)
    assert len("".join(stopped)) < len(full)


@pytest.mark.parametrize("strategy", ["lora", "full", "qlora", "thirdparty_ia3"])
def test_generate_command_answers_prompts_as_json_for_every_strategy(strategy, causal_runs, capsys):
    rc, out, err = cli(capsys, "generate", causal_runs[strategy], "--prompt", PROMPT, "--prompt", "hello",
                       "--greedy", "--max-new-tokens", "4", "--json")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == [PROMPT, "hello"]
    expected = generate(load_trained(causal_runs[strategy]), PROMPT, greedy=True, max_new_tokens=4)
    assert rows[0]["reply"] == expected and isinstance(rows[1]["reply"], str)


def test_prompts_come_from_a_text_file_a_jsonl_file_or_stdin(causal_runs, capsys, tmp_path, monkeypatch):
    run = causal_runs["lora"]
    lines = tmp_path / "prompts.txt"
    lines.write_text("first prompt\n\nsecond prompt\n")
    rc, out, err = cli(capsys, "generate", run, "--file", lines, "--greedy", "--max-new-tokens", "2", "--json")
    assert rc == 0, err
    assert [json.loads(x)["prompt"] for x in out.splitlines()] == ["first prompt", "second prompt"]

    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"prompt": "from jsonl", "response": "ignored"}) + "\n")
    rc, out, err = cli(capsys, "generate", run, "--file", rows, "--greedy", "--max-new-tokens", "2", "--json")
    assert rc == 0, err
    assert [json.loads(x)["prompt"] for x in out.splitlines()] == ["from jsonl"]

    monkeypatch.setattr("sys.stdin", io.StringIO("piped one\npiped two\n"))
    rc, out, err = cli(capsys, "generate", run, "--greedy", "--max-new-tokens", "2")
    assert rc == 0, err
    assert "> piped one" in out and "> piped two" in out


def test_the_chat_keeps_the_conversation_and_ends_on_exit(loaded_lora, monkeypatch):
    seen: list[list[dict]] = []
    real = generate

    def recording(loaded, messages, **kw):
        seen.append([dict(m) for m in messages])
        return real(loaded, messages, **kw)

    monkeypatch.setattr("pefttool.generate.generate", recording)
    typed = iter(["hello", "and then?", "/reset", "fresh", "/exit", "never read"])
    shown: list[str] = []
    replies = chat(loaded_lora, GenerationOptions(greedy=True, max_new_tokens=3),
                   read=lambda prompt: next(typed), write=shown.append)
    assert replies == 3
    assert [m["role"] for m in seen[1]] == ["user", "assistant", "user"]   # multi-turn context
    assert seen[1][0]["content"] == "hello" and seen[1][1]["content"] == real(
        loaded_lora, [{"role": "user", "content": "hello"}], greedy=True, max_new_tokens=3)
    assert seen[2] == [{"role": "user", "content": "fresh"}]              # /reset forgot it
    assert next(typed) == "never read"                                      # /exit ended it

    def eof(prompt):
        raise EOFError   # Ctrl-D

    assert chat(loaded_lora, GenerationOptions(greedy=True, max_new_tokens=2), read=eof,
                write=shown.append) == 0


def test_bad_inputs_to_generate_are_one_line(causal_runs, capsys, tmp_path, tiny_classifier_dir, monkeypatch):
    rc, out, err = cli(capsys, "generate", tmp_path, "--prompt", "x")
    assert_clean_failure(rc, out, err, "is not a pefttool run")
    classifier = run_recipe(load_recipe(write_tiny_recipe(tmp_path / "cls", tiny_classifier_dir, "lora",
                                                          overrides={"train.max_steps": 1,
                                                                     "eval.before_training": False})))
    rc, out, err = cli(capsys, "generate", classifier.run_dir, "--prompt", "x")
    assert_clean_failure(rc, out, err, "classification run", "pefttool predict")
    run = causal_runs["lora"]
    rc, out, err = cli(capsys, "generate", run, "--file", tmp_path / "missing.txt")
    assert_clean_failure(rc, out, err, "missing.txt is not a file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "no prompt column"}) + "\n")
    rc, out, err = cli(capsys, "generate", run, "--file", bad)
    assert_clean_failure(rc, out, err, "line 1 has no 'prompt' text")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    rc, out, err = cli(capsys, "generate", run, "--file", empty)
    assert_clean_failure(rc, out, err, "holds no prompts")
    rc, out, err = cli(capsys, "generate", run, "--prompt", "x", "--top-p", "1.5")
    assert_clean_failure(rc, out, err, "--top-p: 1.5")
    rc, out, err = cli(capsys, "generate", run, "--prompt", "x", "--max-new-tokens", "0")
    assert_clean_failure(rc, out, err, "--max-new-tokens")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    rc, out, err = cli(capsys, "generate", run)
    assert_clean_failure(rc, out, err, "no prompts")

    # Issue 30, item 10: arguments and the run's task are checked before any model loads.
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("pefttool.trained.load_trained", no_loading)
    rc, out, err = cli(capsys, "generate", run, "--prompt", "x", "--temperature", "nan")
    assert_clean_failure(rc, out, err, "--temperature: nan")
    rc, out, err = cli(capsys, "generate", run, "--prompt", "x", "--seed", str(2**70))
    assert_clean_failure(rc, out, err, f"--seed: {2**70}")
    rc, out, err = cli(capsys, "predict", run, "some text")
    assert_clean_failure(rc, out, err, "does not answer a causal-lm run", "pefttool generate")


def _read_until(fd: int, needle: bytes, seen: bytearray, limit_s: float = 180) -> None:
    """Read the terminal until `needle` has appeared once more (a guard, not a timing check)."""
    import os
    import select
    import time

    want = seen.count(needle) + 1
    deadline = time.monotonic() + limit_s
    while seen.count(needle) < want:
        assert time.monotonic() < deadline, f"no {needle!r} on the terminal:\n{seen.decode(errors='replace')}"
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:   # the child closed the terminal
                break


def test_on_a_terminal_generate_opens_a_chat(causal_runs):
    import os
    import pty
    import subprocess

    from fault_helpers import child_env, pefttool_cmd

    master, slave = pty.openpty()
    proc = subprocess.Popen(pefttool_cmd("generate", causal_runs["lora"], "--greedy", "--max-new-tokens", "3"),
                            stdin=slave, stdout=slave, stderr=slave, env=child_env(), close_fds=True)
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, b"you> ", seen)
        os.write(master, b"hello\n")
        _read_until(master, b"you> ", seen)
        os.write(master, b"/exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = seen.decode(errors="replace")
    assert "chat (" in text and "model> " in text and "Traceback" not in text


def test_a_conversation_longer_than_the_model_forgets_its_oldest_turns(loaded_lora):
    limit = loaded_lora.model.config.max_position_embeddings   # 256 for the tiny model
    long_turn = " ".join(["word"] * (limit // 3))
    talk = []
    for _ in range(3):
        talk += [{"role": "user", "content": long_turn}, {"role": "assistant", "content": long_turn}]
    talk.append({"role": "user", "content": "last question"})
    assert len(prompt_ids(loaded_lora, talk)) > limit
    assert isinstance(generate(loaded_lora, talk, greedy=True, max_new_tokens=200), str)
    from pefttool.errors import OutputError

    with pytest.raises(OutputError, match="shorten it"):
        generate(loaded_lora, " ".join(["word"] * (limit + 5)), greedy=True)


# ------------------------------------------------------------------ system turn, --base


def test_system_turn_is_the_runs_by_default_and_system_overrides_it(loaded_lora, causal_runs, capsys):
    tok = loaded_lora.tokenizer
    plain = tok.decode(prompt_ids(loaded_lora, "hello"))
    assert "system:" not in plain      # the tiny template has no default system turn
    mine = tok.decode(prompt_ids(loaded_lora, "hello", system="be brief"))
    assert mine.startswith("system : be brief") and mine.endswith(plain.strip())
    # the CLI's --system gives the same reply as the API with that system turn
    rc, out, err = cli(capsys, "generate", causal_runs["lora"], "--prompt", "hello", "--greedy",
                       "--max-new-tokens", "3", "--json", "--system", "be brief")
    assert rc == 0, err
    want = generate(loaded_lora, "hello", greedy=True, max_new_tokens=3, system="be brief")
    assert json.loads(out)["reply"] == want


@pytest.mark.parametrize("strategy", ["lora", "qlora", "full"])
def test_base_answers_with_the_model_the_run_started_from(strategy, causal_runs, tiny_causal_dir, capsys):
    from transformers import AutoModelForCausalLM

    base = load_trained(causal_runs[strategy], base=True)
    assert not base.adapter
    ids = torch.tensor([prompt_ids(base, PROMPT)])
    if strategy != "qlora":  # the stock base, unwrapped, gives the very same logits
        stock = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            assert torch.allclose(base.model(ids).logits, stock(ids).logits, atol=1e-5)
    with torch.no_grad():
        trained = load_trained(causal_runs[strategy]).model(ids).logits
        assert not torch.allclose(base.model(ids).logits, trained, atol=1e-4)
    rc, out, err = cli(capsys, "generate", causal_runs[strategy], "--base", "--prompt", PROMPT,
                       "--greedy", "--max-new-tokens", "4", "--json")
    assert rc == 0, err
    assert json.loads(out)["reply"] == generate(base, PROMPT, greedy=True, max_new_tokens=4)


def test_a_chat_runs_jsonl_file_gives_conversations(tmp_path):
    """generate --file on a chat run (issue 30, item 13: every row was refused as having no
    'None' text): messages and ShareGPT rows are read as training read them, the reference
    reply left out; a row without either column is one line naming both."""
    import types

    from pefttool.errors import OutputError
    from pefttool.generate import prompts_from_file

    recipe = types.SimpleNamespace(task=types.SimpleNamespace(type="causal-lm", format="chat"), data=types.SimpleNamespace(
        messages_column=None, prompt_template=None, text_column="text", prompt_column="prompt"))
    rows = tmp_path / "chat.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in (
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"conversations": [{"from": "system", "value": "Be brief"}, {"from": "human", "value": "Why?"}]},
    )) + "\n")
    assert prompts_from_file(rows, recipe) == [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Why?"}]]
    rows.write_text(json.dumps({"prompt": "no conversation"}) + "\n")
    with pytest.raises(OutputError, match="line 1 has no messages or conversations list"):
        prompts_from_file(rows, recipe)
    rows.write_text(json.dumps({"messages": [{"role": "assistant", "content": "only a reply"}]}) + "\n")
    with pytest.raises(OutputError, match="has no user turn to answer"):
        prompts_from_file(rows, recipe)


def test_a_typed_prompt_fills_a_one_column_prompt_template(tmp_path):
    """Issue 28.13: a prompt typed for an instruction run whose data.prompt_template names one
    column fills it, as training filled it (generate --prompt, plain --file lines, Try it);
    a template over several columns, or none, leaves the text as typed; JSONL rows fill the
    template from their own columns."""
    import types

    from pefttool.generate import prompts_from_file, typed_prompt, typed_prompt_note

    def recipe(template):
        return types.SimpleNamespace(
            task=types.SimpleNamespace(type="causal-lm", format="instruction", labels=None),
            data=types.SimpleNamespace(prompt_template=template, prompt_column="prompt",
                                       response_column="answer", response_map=None))

    one = recipe("Is this review positive or negative?\n\nReview: {text}")
    assert typed_prompt(one, " a lovely film ") == "Is this review positive or negative?\n\nReview: a lovely film"
    assert typed_prompt_note(one) == "your text fills {text} of the run's data.prompt_template"
    for other in (recipe("Q: {question}\nContext: {context}"), recipe(None)):
        assert typed_prompt(other, "as typed") == "as typed" and typed_prompt_note(other) == ""
    lines = tmp_path / "prompts.txt"
    lines.write_text("a lovely film\ndull\n")
    assert prompts_from_file(lines, one, typed=lambda t: typed_prompt(one, t)) == [
        "Is this review positive or negative?\n\nReview: a lovely film",
        "Is this review positive or negative?\n\nReview: dull"]
    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"text": "from a row"}) + "\n")
    assert prompts_from_file(rows, one, typed=lambda t: "never called") == [
        "Is this review positive or negative?\n\nReview: from a row"]
