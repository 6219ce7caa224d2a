"""Features met the second time, as users meet them: a run folder damaged after the fact (a
model/ without its manifest, a cut events.jsonl), a run still going or interrupted, two runs
at once. Each defect found this way has its regression test here."""

from __future__ import annotations

import json
import shutil

import pytest

from pefttool.engine import run_recipe
from pefttool.runfolder.model_dir import MODEL_MANIFEST
from pefttool.recipe import load_recipe
from test_faults import assert_clean_failure, cli
from tiny_models import write_tiny_recipe


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory, tiny_causal_dir):
    """A short finished causal-lm LoRA run (treat as read-only: copy it to damage it)."""
    folder = tmp_path_factory.mktemp("second-causal")
    recipe = load_recipe(write_tiny_recipe(folder, tiny_causal_dir, "lora", "causal-lm", overrides={
        "train.max_steps": 2, "eval.before_training": False}))
    return run_recipe(recipe).run_dir


def _copy(run_dir, tmp_path, name="copy"):
    return shutil.copytree(run_dir, tmp_path / name)


def _drop_end_event(run_dir) -> None:
    """The run as a killed process leaves it: no end event."""
    events = run_dir / "events.jsonl"
    lines = [l for l in events.read_text().splitlines() if json.loads(l).get("type") != "end"]
    events.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ a damaged model/ (generate)


@pytest.mark.parametrize("damage", ["cut weights", "garbage weights", "bad adapter config",
                                    "no config"])
def test_a_damaged_model_without_its_manifest_is_one_line_not_an_internal_error(
        damage, causal_run, tmp_path, capsys):
    # A model/ copied by hand or from an older pefttool has no manifest to check against:
    # the loader's SafetensorError / JSONDecodeError used to escape as "internal error", exit 1.
    run = _copy(causal_run, tmp_path)
    model = run / "model"
    (model / MODEL_MANIFEST).unlink()
    weights = model / "adapter_model.safetensors"
    if damage == "cut weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage weights":
        weights.write_bytes(b"\x93not safetensors at all" * 100)
    elif damage == "bad adapter config":
        (model / "adapter_config.json").write_text('{"peft_type": ')
    else:
        (model / "adapter_config.json").unlink()
    rc, out, err = cli(capsys, "generate", run, "--prompt", "hi", "--greedy", "--max-new-tokens", "2")
    assert_clean_failure(rc, out, err, f"{model} is damaged")
    assert out == ""


def test_the_fix_for_a_damaged_model_is_what_resume_really_does(causal_run, tmp_path, capsys):
    # It used to say "resume the run to rebuild it" for a finished run too, and resume then
    # refused ("already finished"): a loop with no way out. A finished run is now rebuilt by
    # resume (the repair tests below); an unfinished one as it goes on training.
    finished = _copy(causal_run, tmp_path, "finished")
    weights = finished / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    rc, out, err = cli(capsys, "generate", finished, "--prompt", "hi")
    assert_clean_failure(rc, out, err, "is damaged", f"pefttool resume {finished}")

    killed = _copy(causal_run, tmp_path, "killed")
    _drop_end_event(killed)
    weights = killed / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    rc, out, err = cli(capsys, "generate", killed, "--prompt", "hi")
    assert_clean_failure(rc, out, err, "is damaged", f"pefttool resume {killed}")
    rc, out, err = cli(capsys, "resume", killed, "--quiet")  # ...and resume does rebuild it
    assert rc == 0, err
    rc, out, err = cli(capsys, "generate", killed, "--prompt", "hi", "--greedy", "--max-new-tokens", "2")
    assert rc == 0, err


# ------------------------------------------------------------------ repair: resume rebuilds a finished run's model/


def _logits(model, tokenizer):
    import torch

    enc = tokenizer(["a good film", "slow and boring"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def _snapshot(folder):
    """Every file under `folder` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_rebuilds_a_finished_runs_damaged_model_from_its_best_checkpoint(
        causal_run, tmp_path, capsys, tiny_causal_dir):
    # A finished run's model/ with a cut weight file used to be a dead end: resume refused
    # ("already finished") and the advice was to train again. Its best checkpoint holds the
    # same weights; resume now saves model/ again from it, without training.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pefttool.runfolder.checkpoints import verify_files
    from pefttool.runfolder.summary import summarize
    from pefttool.trained import load_trained

    run = _copy(causal_run, tmp_path, "finished")
    model = run / "model"
    trained = load_trained(run)
    before = _logits(trained.model, trained.tokenizer)
    rc, out, err = cli(capsys, "resume", run)       # intact: still refused, nothing rebuilt
    assert_clean_failure(rc, out, err, "already finished (completed)")
    kept = {name: (run / name).read_bytes() for name in ("metrics.json", "recipe.toml", ".pefttool-run")}
    events = (run / "events.jsonl").read_text().splitlines()
    checkpoints = _snapshot(run / "checkpoints")

    weights = model / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rc, out, err = cli(capsys, "resume", run)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "rebuilt it from step-0000002" in lines[0], out
    assert "without training" in lines[0] and "Traceback" not in out + err
    # the rebuild's set-up flushed denormals; this process gets its own CPU state back (code
    # after it, such as the fuzz tests' subnormal floats, depends on it)
    import sys

    assert sys.float_info.min / 2 != 0.0
    # written as the engine writes it: manifest, no temporary folder left
    assert verify_files(model, MODEL_MANIFEST) is None and (model / MODEL_MANIFEST).is_file()
    assert not list(run.glob(".model*"))
    # the run is as it ended: same status, files, events (plus one log line), checkpoints
    assert {name: (run / name).read_bytes() for name in kept} == kept
    after = (run / "events.jsonl").read_text().splitlines()
    assert after[:len(events)] == events and len(after) == len(events) + 1
    assert json.loads(after[-1])["type"] == "log"
    assert summarize(run).status == "completed" and summarize(run).segments == 1
    assert _snapshot(run / "checkpoints") == checkpoints
    # the same model: pefttool's loader and stock transformers + PEFT give the same logits
    rebuilt = load_trained(run)
    assert (_logits(rebuilt.model, rebuilt.tokenizer) == before).all()
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    stock = PeftModel.from_pretrained(base, str(model)).eval()
    assert (_logits(stock, trained.tokenizer) == before).all()
    rc, out, err = cli(capsys, "resume", run)       # intact again: refused again
    assert_clean_failure(rc, out, err, "already finished (completed)")

    shutil.rmtree(model)                            # model/ gone altogether: rebuilt too
    rc, out, err = cli(capsys, "resume", run, "--quiet")
    assert rc == 0 and "model/ is missing" in out, out + err
    again = load_trained(run)
    assert (_logits(again.model, again.tokenizer) == before).all()


def test_a_multi_process_runs_model_is_rebuilt_in_one_process(causal_run, tmp_path, capsys,
                                                              monkeypatch):
    # `pefttool resume` starts a multi-process run's processes again; to rebuild model/ only
    # (nothing trained) it takes this one. Checked by hand on a real 2-process run: rebuilt
    # in one process, the same logits (largest difference 0.0). Here the run's recipe says 2.
    import tomllib

    import tomli_w

    import pefttool.distributed

    run = _copy(causal_run, tmp_path, "two")
    recipe = tomllib.loads((run / "recipe.toml").read_text())
    recipe["distributed"]["processes"] = 2
    (run / "recipe.toml").write_text(tomli_w.dumps(recipe))
    marker = json.loads((run / ".pefttool-run").read_text())
    marker["recipe"]["distributed"]["processes"] = 2
    (run / ".pefttool-run").write_text(json.dumps(marker))
    weights = run / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])

    def no_launch(*args, **kwargs):
        raise AssertionError("launched processes to rebuild model/")

    monkeypatch.setattr(pefttool.distributed, "run_launched", no_launch)
    rc, out, err = cli(capsys, "resume", run)
    assert rc == 0 and "rebuilt it from step-0000002" in out, out + err


def test_an_unfinished_runs_damaged_model_is_rebuilt_from_the_best_steps_checkpoint(
        causal_run, tmp_path, capsys):
    # `best_checkpoint` names the last checkpoint written at a best step: an older best when
    # the newest one was found by an eval.every_steps evaluation with no checkpoint at its step.
    # Resume used it to rebuild model/ (an older model, or, when it named none left, model/ moved
    # aside and no model at all); the checkpoint of `best_step` is the one model/ came from.
    from pefttool.trained import load_trained

    run = _copy(causal_run, tmp_path, "killed")
    trained = load_trained(run)
    before = _logits(trained.model, trained.tokenizer)
    _drop_end_event(run)
    state_file = run / "checkpoints" / "step-0000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["best_step"] == 2
    state["best_checkpoint"] = "step-0000001"   # a best before the last one, without checkpoint
    state_file.write_text(json.dumps(state))
    weights = run / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    rc, out, err = cli(capsys, "resume", run, "--quiet")
    assert rc == 0, err
    assert "rebuilt it from the best checkpoint step-0000002" in out, out
    rebuilt = load_trained(run)
    assert (_logits(rebuilt.model, rebuilt.tokenizer) == before).all()


@pytest.mark.parametrize("loss", ["best checkpoint gone", "best checkpoint damaged"])
def test_resume_without_the_best_checkpoint_is_one_line_and_changes_nothing(
        loss, causal_run, tmp_path, capsys):
    run = _copy(causal_run, tmp_path, "finished")
    weights = run / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    best = run / "checkpoints" / "step-0000002"
    if loss == "best checkpoint gone":
        shutil.rmtree(best)
        why = "checkpoints/step-0000002 (the best evaluation's, step 2, which model/ was saved from) is gone"
    else:
        state = best / "model.safetensors"
        state.write_bytes(state.read_bytes()[:1000])
        why = "checkpoints/step-0000002 (the best evaluation's, step 2, which model/ was saved from) is damaged"
    files = _snapshot(run)
    rc, out, err = cli(capsys, "resume", run)
    assert_clean_failure(rc, out, err, "its model/ is damaged", why, "train it again")
    assert _snapshot(run) == files                  # nothing written, nothing removed
    # and the advice of generate no longer points at resume
    rc, out, err = cli(capsys, "generate", run, "--prompt", "hi")
    assert_clean_failure(rc, out, err, "is damaged", why, "cannot rebuild it", "output.dir=NEW_FOLDER")


# ------------------------------------------------------------------ plot: a cut or empty events.jsonl


def test_plot_refuses_events_with_nothing_to_plot_and_writes_nothing(causal_run, tmp_path, capsys):
    # An empty or garbled events.jsonl used to give a blank picture and exit 0.
    empty = _copy(causal_run, tmp_path, "empty")
    (empty / "events.jsonl").write_text("")
    rc, out, err = cli(capsys, "plot", empty, "--out", tmp_path / "empty.png")
    assert_clean_failure(rc, out, err, "nothing to plot")
    garbled = _copy(causal_run, tmp_path, "garbled")
    (garbled / "events.jsonl").write_bytes(b"\x00\xff garbage\n{not json\n[1, 2]\n")
    rc, out, err = cli(capsys, "plot", garbled, "--out", tmp_path / "garbled.png")
    assert_clean_failure(rc, out, err, "events.jsonl is damaged", "nothing to plot")
    assert not list(tmp_path.glob("*.png"))
    # partly garbled: drawn, and the skipped lines are said
    partly = _copy(causal_run, tmp_path, "partly")
    with open(partly / "events.jsonl", "a") as fh:
        fh.write("{not json\n")
    rc, out, err = cli(capsys, "plot", partly, "--out", tmp_path / "partly.png")
    assert rc == 0, err
    assert (tmp_path / "partly.png").is_file()
    assert "1 line(s) of events.jsonl are not events" in err


# ------------------------------------------------------------------ chat + packing, 2 processes


def write_chat_rows(path, n: int = 64) -> None:
    """`n` unique conversations; each renders to more than 16 tokens, so with max_length 16 each
    is cut to exactly 16 and fills a packed row alone: every row holds 16 real tokens."""
    words = ["good", "film", "story", "great", "boring", "lovely", "cast", "score", "ending", "slow"]
    rows = []
    for i in range(n):
        reply = " ".join(words[(i + k) % len(words)] for k in range(12))
        rows.append({"messages": [{"role": "user", "content": f"question {i}"},
                                  {"role": "assistant", "content": reply}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def chat_recipe(folder, model_dir, **overrides):
    folder.mkdir(parents=True, exist_ok=True)
    write_chat_rows(folder / "chat.jsonl")
    return write_tiny_recipe(folder, model_dir, "lora", "causal-lm", overrides={
        "task.format": "chat", "data.train": str(folder / "chat.jsonl"), "data.prompt_column": None,
        "data.response_column": None, "data.max_length": 16, "data.packing": True,
        "train.epochs": 2, "train.checkpoint_every": 4, "eval.before_training": False,
        "eval.max_new_tokens": None, **overrides})


def tokens_seen(run_dir) -> int:
    from pefttool.runfolder.checkpoints import TrainState, list_checkpoints

    return TrainState.from_file(list_checkpoints(run_dir)[-1] / "trainer_state.json").tokens_seen


# ------------------------------------------------------------------ chat: stopped and resumed = straight


@pytest.mark.parametrize("layout", [{"data.packing": True},
                                    {"data.packing": False, "data.group_by_length": True}],
                         ids=["packing", "group_by_length"])
def test_a_chat_run_crashed_and_resumed_ends_as_an_uninterrupted_one(layout, tmp_path, tiny_causal_dir):
    # checked, no defect found (also by hand with kill -9 on `pefttool run`): kept as coverage
    # of task.format = "chat" with each batch layout, which the resume tests did not run.
    from pefttool.runfolder.checkpoints import list_checkpoints
    from pefttool.errors import PefttoolError
    from fault_helpers import max_abs_diff, metrics_of, tensors
    from test_resume import _CrashAt

    overrides = {"train.batch_size": 4, "method.dropout": 0.1, "train.checkpoint_every": 3, **layout}
    want = run_recipe(load_recipe(chat_recipe(tmp_path / "a", tiny_causal_dir, **overrides)))
    broken = load_recipe(chat_recipe(tmp_path / "b", tiny_causal_dir, **overrides))
    with pytest.raises(PefttoolError, match="simulated crash"):
        run_recipe(broken, observers=(_CrashAt(want.steps // 2 + 1),))   # mid-epoch 2
    run_dir = tmp_path / "b" / "runs" / "recipe"
    assert list_checkpoints(run_dir)
    got = run_recipe(broken, resume=True, run_dir=run_dir)
    assert (got.status, got.steps, got.best, got.best_step) == (want.status, want.steps, want.best,
                                                                want.best_step)
    assert metrics_of(run_dir)["history"] == metrics_of(want.run_dir)["history"]
    assert tokens_seen(run_dir) == tokens_seen(want.run_dir)
    a = tensors(want.run_dir / "model" / "adapter_model.safetensors")
    assert max_abs_diff(a, tensors(run_dir / "model" / "adapter_model.safetensors")) == 0.0
