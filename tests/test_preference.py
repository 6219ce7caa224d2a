"""The `preference` task plugin (issue 26): pairs read and rendered as chat SFT renders them,
DPO/IPO/SimPO/ORPO losses against hand-worked figures, bad pairs counted, a tiny run of each
kind, and the reference that needs an adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pefttool.engine import run_recipe
from pefttool.recipe import load_recipe
from tiny_models import TINY_LABELS, tiny_rows, to_toml


def write_pairs(path: Path, n: int = 48) -> Path:
    """Pairs a tiny random model learns in a few steps: the chosen reply is always one word,
    the rejected another (held-out pairs then follow too)."""
    rows = [{"prompt": f"Is this review positive or negative? {text}", "chosen": TINY_LABELS[1],
             "rejected": TINY_LABELS[0]} for text, _ in tiny_rows(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pair_recipe(tmp_path: Path, model_dir: Path, strategy: str = "lora", **task: object) -> Path:
    data = {
        "name": "pairs",
        "model": {"path": str(model_dir), "dtype": "float32"},
        "task": {"type": "preference", **task},
        "data": {"train": str(write_pairs(tmp_path / "pairs.jsonl")), "eval_fraction": 0.25,
                 "max_length": 48, "seed": 0},
        "method": {"strategy": strategy, **({"r": 4, "alpha": 8, "dropout": 0.0} if strategy != "full" else {})},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "seed": 0, "threads": 1, "log_every": 1,
                  "device": "cpu", "max_steps": 4},
        "eval": {"batch_size": 8, "before_training": True},
        "early_stopping": {"enabled": False},
        "output": {"dir": str(tmp_path / "runs" / "pairs"), "overwrite": False},
    }
    path = tmp_path / "pairs.toml"
    path.write_text(to_toml(data))
    return path


# ---------------------------------------------------------------- the maths, by hand


def _options(**kw):
    from pefttool_preference import PreferenceOptions

    return PreferenceOptions(**kw)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_the_losses_match_hand_worked_figures():
    from pefttool_preference import pair_scores

    # one pair: policy sums -2.0 (chosen, 4 tokens), -6.0 (rejected, 3 tokens);
    # reference sums -3.0 (chosen), -5.0 (rejected)
    policy = (torch.tensor([-2.0, -6.0]), torch.tensor([4, 3]))
    reference = (torch.tensor([-3.0, -5.0]), torch.tensor([4, 3]))
    # DPO: logits = (-2 - -3) - (-6 - -5) = 2; loss = -log σ(0.1 × 2)
    scores, loss = pair_scores(_options(loss="dpo", beta=0.1), policy, reference)
    assert loss.item() == pytest.approx(-math.log(_sig(0.2)), abs=1e-6)
    assert scores.chosen_rewards.item() == pytest.approx(0.1) and scores.rejected_rewards.item() == pytest.approx(-0.1)
    # label smoothing 0.1: 0.9 × -log σ(0.2) + 0.1 × -log σ(-0.2)
    _, loss = pair_scores(_options(loss="dpo", beta=0.1, label_smoothing=0.1), policy, reference)
    assert loss.item() == pytest.approx(-0.9 * math.log(_sig(0.2)) - 0.1 * math.log(_sig(-0.2)), abs=1e-6)
    # IPO on per-token averages: (-0.5 - -0.75) - (-2 - -5/3) = 0.25 + 1/3; loss = (x - 1/(2β))²
    _, loss = pair_scores(_options(loss="ipo", beta=0.1), policy, reference)
    assert loss.item() == pytest.approx((0.25 + 1 / 3 - 5) ** 2, abs=1e-5)
    # SimPO: β(avg_c - avg_r) - γ = 2 × (-0.5 + 2) - 0.5 = 2.5; no reference needed
    _, loss = pair_scores(_options(loss="simpo", beta=2.0, gamma=0.5), policy, None)
    assert loss.item() == pytest.approx(-math.log(_sig(2.5)), abs=1e-6)
    # ORPO: NLL of chosen per token (2/4) − λ log σ(log odds); odds of p = avg log-prob
    c, r = -0.5, -2.0
    log_odds = (c - r) - (math.log(1 - math.exp(c)) - math.log(1 - math.exp(r)))
    _, loss = pair_scores(_options(loss="orpo", beta=0.1), policy, None)
    assert loss.item() == pytest.approx(0.5 - 0.1 * math.log(_sig(log_odds)), abs=1e-6)


def test_recipe_options_are_checked_with_the_key_named(tmp_path, tiny_causal_dir):
    from pefttool.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        load_recipe(pair_recipe(tmp_path, tiny_causal_dir, loss="kto-ish", chosen_column="a",
                                rejected_column="a"))
    text = "\n".join(info.value.problems)
    assert "task.loss" in text and "dpo" in text
    with pytest.raises(RecipeError) as info:
        load_recipe(pair_recipe(tmp_path, tiny_causal_dir, chosen_column="a", rejected_column="a",
                                loss="ipo", label_smoothing=0.1))
    text = "\n".join(info.value.problems)
    assert "task.rejected_column: 'a' is also task.chosen_column" in text
    assert "task.label_smoothing: applies to task.loss = \"dpo\" or \"simpo\"" in text


# ---------------------------------------------------------------- rows


def _prepared(recipe_path: Path, lines: list[str] | None = None):
    from pefttool.data import prepare_data
    from pefttool.models import load_tokenizer

    recipe = load_recipe(recipe_path)
    return recipe, prepare_data(recipe, load_tokenizer(recipe), log=(lines if lines is not None else []).append)


def test_pairs_render_through_the_chat_template_with_one_prompt_and_bad_pairs_are_named(
        tmp_path, tiny_causal_dir):
    """Both rows of a pair share the prompt's tokens exactly; labels cover the reply (its
    end-of-turn token included) and nothing of the prompt; identical or empty replies, a
    prompt ending on an assistant turn, a reply conversation that disagrees with the prompt
    are bad pairs, counted by reason; a prompt over max_length is dropped and counted."""
    from transformers import AutoTokenizer

    path = pair_recipe(tmp_path, tiny_causal_dir)
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    rows[0]["prompt"] = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                         {"role": "user", "content": "Is this good? " + rows[0]["prompt"]}]
    rows += [{"prompt": "Same?", "chosen": "yes", "rejected": "yes"},
             {"prompt": "Empty?", "chosen": "", "rejected": "no"},
             {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
              "chosen": "c", "rejected": "d"},
             {"prompt": "Which?", "chosen": [{"role": "user", "content": "Other?"},
                                            {"role": "assistant", "content": "x"}], "rejected": "y"},
             {"prompt": "long " * 80, "chosen": "yes", "rejected": "no"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = path.read_text().replace('[data]\n', '[data]\non_bad_rows = "skip"\neval = "held.jsonl"\n')
    path.write_text(text.replace("eval_fraction = 0.25\n", ""))
    (tmp_path / "held.jsonl").write_text("".join(json.dumps({**r, "prompt": "Held out: " + r["prompt"]}) + "\n"
                                                 for r in rows[1:9]))
    lines: list[str] = []
    recipe, data = _prepared(path, lines)
    counts = data.stats["train"]
    bad = "\n".join(lines)
    assert counts["dropped_bad"] == 4
    for reason in ("is the same reply", "is empty (no reply)", "not the user's turn the replies answer"):
        assert reason in bad, bad   # (the log names three examples; the fourth, directly:)
    from pefttool.data.formats import BadRow
    from pefttool_preference import PairRows

    with pytest.raises(BadRow, match="differ from the prompt's"):
        PairRows.from_recipe(recipe).make_row(recipe, rows[-2])
    assert counts["dropped_truncated"] == 1
    tok = AutoTokenizer.from_pretrained(tiny_causal_dir)
    first = None
    for row in data.train:
        prompt_len = next(i for i, x in enumerate(row["labels"]) if x != -100)
        assert row["input_ids"][:prompt_len] == row["rejected_input_ids"][:prompt_len]
        assert row["rejected_labels"][:prompt_len] == [-100] * prompt_len
        assert row["labels"][prompt_len:] == row["input_ids"][prompt_len:]
        assert row["input_ids"][-1] == tok.eos_token_id     # the template's end of turn, learnt
        if "hello" in tok.decode(row["input_ids"]):   # (the tiny tokenizer lowercases)
            first = tok.decode(row["input_ids"][:prompt_len])
    # the prompt is what the chat template writes for these turns, generation prompt included
    assert first is not None and first.endswith("assistant :")
    batch = data.collate([data.train[0], data.train[1]])
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"] != -100).sum() > 0


# ---------------------------------------------------------------- runs


@pytest.mark.parametrize("strategy, loss", [("lora", "dpo"), ("qlora", "ipo"), ("full", "orpo")])
def test_a_tiny_preference_run_trains_and_reports_its_metrics(tmp_path, tiny_causal_dir, strategy, loss):
    result = run_recipe(load_recipe(pair_recipe(tmp_path, tiny_causal_dir, strategy, loss=loss)))
    assert result.status == "completed" and result.steps == 4
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    before, after = metrics["history"][0], metrics["history"][-1]
    assert set(after) >= {"reward_accuracy", "reward_margin", "eval_loss", "logps_chosen", "logps_rejected"}
    if loss == "dpo":   # the untrained adapter is the reference: every pair ties
        assert before["reward_accuracy"] == 0.5 and before["reward_margin"] == 0.0
        assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    # the held-out pairs are won, by a margin: the chosen replies became the likelier ones
    assert after["reward_accuracy"] == 1.0 and after["reward_margin"] > 0, metrics["history"]
    assert after["logps_chosen"] - after["logps_rejected"] > before["logps_chosen"] - before["logps_rejected"]
    assert (result.run_dir / "model").is_dir()


def _with_keys(path: Path, **keys: object) -> Path:
    import tomllib

    from tiny_models import set_dotted

    data = tomllib.loads(path.read_text())
    for key, value in keys.items():
        set_dotted(data, key.replace("__", "."), value)
    path.write_text(to_toml(data))
    return path


def test_dpo_continues_a_finished_sft_runs_adapter_with_the_sft_model_as_reference(tmp_path, tiny_causal_dir):
    """Issue 26.3: `model.adapter = RUN` trains the SFT run's adapter further, and the
    reference is the SFT'd model (a frozen copy of that adapter), not the base: before
    training, policy and reference are one model, so every pair ties exactly (with the base as
    reference they would not). The run saves one adapter, not the frozen copy."""
    from safetensors.torch import load_file

    from tiny_models import write_tiny_recipe

    sft = run_recipe(load_recipe(write_tiny_recipe(tmp_path / "sft", tiny_causal_dir, "lora", task="causal-lm",
                                                   overrides={"train.max_steps": 3, "eval.before_training": False})))
    assert sft.status == "completed"
    recipe = _with_keys(pair_recipe(tmp_path, tiny_causal_dir, loss="dpo"), model__adapter=str(sft.run_dir))
    result = run_recipe(load_recipe(recipe))
    assert result.status == "completed"
    history = json.loads((result.run_dir / "metrics.json").read_text())["history"]
    assert history[0]["reward_margin"] == 0.0 and history[0]["reward_accuracy"] == 0.5
    assert history[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    said = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e["type"] == "log" and e["message"].startswith(f"continuing the adapter in {sft.run_dir / 'model'}")
               for e in said)
    model_dir = result.run_dir / "model"
    assert not (model_dir / "reference").exists()
    before, after = load_file(sft.run_dir / "model" / "adapter_model.safetensors"), \
        load_file(model_dir / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)   # trained further
    # the SFT'd model is not the base (its B matrices trained away from 0): with the base as
    # reference the pairs would not have tied
    assert any(k.endswith("lora_B.weight") and before[k].abs().max() > 0 for k in before)


def test_model_adapter_problems_are_one_line(tmp_path, tiny_causal_dir):
    from pefttool.errors import RecipeError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecipeError, match=r"model.adapter: '.*empty' holds no PEFT adapter \(adapter_config.json"):
        load_recipe(_with_keys(pair_recipe(tmp_path, tiny_causal_dir, loss="orpo"), model__adapter=str(empty)))
    sft = run_recipe(load_recipe(write_tiny_recipe_for(tmp_path, tiny_causal_dir)))
    (tmp_path / "f").mkdir()
    full = _with_keys(pair_recipe(tmp_path / "f", tiny_causal_dir, "full", loss="orpo"), model__adapter=str(sft.run_dir))
    with pytest.raises(RecipeError, match=r"model.adapter: strategy 'full' does not train an existing adapter"):
        run_recipe(load_recipe(full))


def write_tiny_recipe_for(tmp_path: Path, model_dir: Path) -> Path:
    from tiny_models import write_tiny_recipe

    return write_tiny_recipe(tmp_path / "sft", model_dir, "lora", task="causal-lm",
                             overrides={"train.max_steps": 1, "eval.before_training": False})


def test_full_fine_tuning_dpo_takes_its_frozen_base_as_the_reference(tmp_path, tiny_causal_dir):
    """Issue 26.3: with no adapter to disable, the reference is the base loaded once more,
    frozen: before the first step it is the policy (every pair ties), and the run learns."""
    result = run_recipe(load_recipe(pair_recipe(tmp_path, tiny_causal_dir, "full", loss="dpo")))
    assert result.status == "completed"
    history = json.loads((result.run_dir / "metrics.json").read_text())["history"]
    before, after = history[0], history[-1]
    assert before["reward_accuracy"] == 0.5 and before["reward_margin"] == 0.0
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert after["reward_margin"] > 0 and after["eval_loss"] < before["eval_loss"]


@pytest.mark.parametrize("from_sft, strategy", [(False, "lora"), (True, "lora"), (False, "full")],
                         ids=["fresh-adapter", "continued-sft-adapter", "full-frozen-base"])
def test_a_dpo_run_killed_between_checkpoints_resumes_exactly(tmp_path, tiny_causal_dir, from_sft, strategy):
    """kill -9 after step 5 (checkpoints every 2 steps, so step 4's is the last): the resume
    ends where an uninterrupted run ends, the same step losses, evaluations and adapter; also
    when it continues an SFT run's adapter (model.adapter: the reference is its frozen copy)."""
    import shutil

    import pefttool
    from fault_helpers import events_of, max_abs_diff, metrics_of, of_type, tensors
    from pefttool.errors import PefttoolError
    from pefttool.runfolder.checkpoints import TrainState, list_checkpoints

    class DieAfter:
        @pefttool.hookimpl
        def pefttool_step_end(self, event):
            if event.step == 5:
                raise RuntimeError("killed")

    def recipe(folder: Path):
        folder.mkdir()
        path = pair_recipe(folder, tiny_causal_dir, strategy, loss="dpo")
        text = path.read_text().replace("dropout = 0.0", "dropout = 0.1").replace(
            "max_steps = 4", "max_steps = 8\ncheckpoint_every = 2\nkeep_checkpoints = 10")
        path.write_text(text.replace("before_training = true", "before_training = false\nevery_steps = 4"))
        if sft is not None:
            _with_keys(path, model__adapter=str(sft))
        return load_recipe(path)

    sft = run_recipe(load_recipe(write_tiny_recipe_for(tmp_path, tiny_causal_dir))).run_dir if from_sft else None
    straight = run_recipe(recipe(tmp_path / "a"))
    assert (straight.status, straight.steps) == ("completed", 8)
    interrupted = recipe(tmp_path / "b")
    run_dir = tmp_path / "b" / "runs" / "pairs"
    with pytest.raises(PefttoolError, match="killed"):
        run_recipe(interrupted, observers=(DieAfter(),))
    for newer in list_checkpoints(run_dir):   # a kill -9 never writes the crash's checkpoint
        if TrainState.from_file(newer / "trainer_state.json").global_step > 4:
            shutil.rmtree(newer)
    got = run_recipe(interrupted, resume=True, run_dir=run_dir)
    assert (got.status, got.steps) == ("completed", 8)
    want = {e.step: e.loss for e in of_type(events_of(straight.run_dir), "step")}
    resumed = [e for e in of_type(events_of(run_dir), "step") if e.step > 4]
    assert resumed and all(e.loss == pytest.approx(want[e.step], abs=1e-6) for e in resumed)
    for x, y in zip(metrics_of(straight.run_dir)["history"], metrics_of(run_dir)["history"]):
        assert x == pytest.approx(y, abs=1e-6)
    weights = "adapter_model.safetensors" if strategy == "lora" else "model.safetensors"
    assert max_abs_diff(tensors(straight.run_dir / "model" / weights), tensors(run_dir / "model" / weights)) <= 1e-6


def test_dpo_matches_trls_dpo_trainer_when_trl_is_installed():
    """Issue 26.6: the same pairs, model, LoRA and beta through TRL's DPOTrainer and through
    this task: equal token ids, and loss and chosen/rejected log-probs within 1e-4. TRL is not
    a dependency: the test runs where it is importable (and `make chat-data` has run)."""
    import importlib.util
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    if importlib.util.find_spec("trl") is None:
        pytest.skip("TRL is not installed (pip install --no-deps --target DIR trl; PYTHONPATH=DIR); "
                    "its last output is in benchmarks/RESULTS.md")
    if not (repo / "build" / "chat" / "chatterbot-pairs.jsonl").is_file():
        pytest.skip("make chat-data has not run (the model and the pairs)")
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "dpo_vs_trl.py"), "--pairs", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "PASS" in done.stdout, done.stdout + done.stderr[-2000:]


def test_inspect_shows_both_replies_of_a_pair_with_their_loss_tokens(tmp_path, tiny_causal_dir):
    """Issue 26.4: `inspect` shows a pair as training batches it: the chosen and the rejected
    row, the loss tokens of each marked, the prompt the same in both."""
    from pefttool.inspection import format_text, inspect_recipe

    preview = inspect_recipe(load_recipe(pair_recipe(tmp_path, tiny_causal_dir)), rows=1)
    chosen, rejected = preview.rows
    assert (chosen.part, rejected.part) == ("chosen", "rejected") and chosen.index == rejected.index == 0
    assert [t for t, loss in chosen.spans if loss] and [t for t, loss in rejected.spans if loss]
    assert chosen.spans[0] == rejected.spans[0] and not chosen.spans[0][1]   # the prompt, no loss
    text = format_text(preview)
    assert "--- train row 1, chosen:" in text and "--- train row 1, rejected:" in text


def test_plan_counts_both_rows_of_a_pair(tmp_path, tiny_causal_dir, monkeypatch):
    """Issue 26.4: a batch of N pairs is 2N rows through the model: `plan` counts them."""
    from pefttool.plan import estimate
    from pefttool_preference import PreferenceTask

    path = pair_recipe(tmp_path, tiny_causal_dir)   # batch 4 pairs, eval batch 8 pairs
    pairs = estimate(load_recipe(path)).own
    monkeypatch.setattr(PreferenceTask, "rows_per_example", 1)
    rows = estimate(load_recipe(path, ["train.batch_size=8", "eval.batch_size=16"])).own
    assert pairs.cpu.activations > estimate(load_recipe(path)).own.cpu.activations
    assert (pairs.cpu.activations, pairs.phases) == (rows.cpu.activations, rows.phases)


def test_plan_counts_the_frozen_base_of_a_full_dpo_run_and_not_of_orpo(tmp_path, tiny_causal_dir):
    """Issue 26.4: plan counts the reference: full DPO keeps the base twice (weights), ORPO once."""
    from pefttool import plan as P

    dpo = P.estimate(load_recipe(pair_recipe(tmp_path, tiny_causal_dir, "full", loss="dpo")),
                     strategies=("full",)).own
    (tmp_path / "o").mkdir()
    orpo = P.estimate(load_recipe(pair_recipe(tmp_path / "o", tiny_causal_dir, "full", loss="orpo")),
                      strategies=("full",)).own
    assert dpo.cpu.weights == 2 * orpo.cpu.weights and "1 frozen copy of the base" in dpo.note
    lora = P.estimate(load_recipe(pair_recipe(tmp_path / "o", tiny_causal_dir, "lora", loss="dpo")),
                      strategies=("lora",)).own
    assert "frozen" not in lora.note   # the adapter is disabled instead: one base


def test_padding_free_pairs_train_as_the_padded_batches_do(tmp_path, tiny_causal_dir):
    """task.padding_free: the 2N sequences of a batch packed into rows (no padding), each
    attending only to itself: the same losses and metrics as the padded batches (1e-5)."""
    from pefttool_preference import PairCollator

    rows = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4],
             "rejected_input_ids": [1, 2, 5], "rejected_labels": [-100, -100, 5]},
            {"input_ids": [7, 8, 9, 10, 11], "labels": [-100, 8, 9, 10, 11],
             "rejected_input_ids": [7, 8, 12, 13], "rejected_labels": [-100, 8, 12, 13]}]
    batch = PairCollator(pad_id=0, pack_to=9)(rows)
    index, positions = batch["pair_index"], batch["position_ids"]
    assert "attention_mask" not in batch and batch["input_ids"].shape[1] == 9
    assert sorted(set(index[index >= 0].tolist())) == [0, 1, 2, 3]           # every sequence, once
    assert int((index >= 0).sum()) == 4 + 5 + 3 + 4 and batch["pefttool_counts"].tolist() == [16, 4]
    for k in range(4):   # positions restart at 0 for each sequence; its first label is -100
        at = (index == k).nonzero()
        first = at[0]
        assert positions[first[0], first[1]] == 0 and batch["labels"][first[0], first[1]] == -100
    runs = {}
    for free in (False, True):
        folder = tmp_path / f"free-{free}"
        folder.mkdir()
        path = _with_keys(pair_recipe(folder, tiny_causal_dir, loss="dpo"), task__padding_free=free)
        result = run_recipe(load_recipe(path))
        assert result.status == "completed"
        runs[free] = json.loads((result.run_dir / "metrics.json").read_text())["history"]
    for padded, packed in zip(runs[False], runs[True]):
        assert packed == pytest.approx(padded, abs=1e-5)
