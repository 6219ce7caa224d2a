"""Test a strategy plugin on a tiny model in one line, inside the plugin author's own pytest:

    from pefttool.testing import check_strategy

    def test_my_strategy_trains(tmp_path):
        check_strategy("mystrategy", tmp_path, options={"rank": 4})

`check_strategy` builds a tiny random BERT classifier with its own small WordPiece vocabulary
(no download), writes a clearly separable CSV and a recipe, trains a few epochs with your
strategy through the real engine (every hook and method your strategy has is called), and
asserts that the eval loss falls below the untrained model's, that the saved model reloads
with stock transformers/PEFT and carries the training (its outputs differ from the untrained
base's), and optionally that it classifies the tiny data (`min_accuracy`). It returns
the `RunResult` for further checks. The strategy must be installed (its entry point) or
registered with `get_plugin_host().register(plugin, name)` beforehand.

A task plugin's test does the same through `check_task`:

    from pefttool.testing import check_task

    def test_my_task_runs_end_to_end(tmp_path):
        check_task("mytask", tmp_path, data=write_my_rows(tmp_path / "rows.csv"),
                   data_keys={"label_column": "score"})

It trains the task on the tiny model (or `model_dir`), asserts the run completes with the
task's default metric finite in metrics.json and the eval loss falling, then loads the saved
model as `pefttool predict`/`generate` does and answers `prompts` with it, and exports it
(`pefttool export`, adapter and merged).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

from .recipe import DEFAULT_STRATEGY

# The tiny model's tokenizer knows these words (and the numbers 0-199): a task plugin's test
# data built from them reaches the model as real tokens, not [UNK].
POSITIVE_WORDS = ["good", "great", "lovely", "superb", "fine", "nice", "brilliant", "pleasant"]
NEGATIVE_WORDS = ["bad", "awful", "poor", "dreadful", "boring", "ugly", "terrible", "weak"]
THINGS = ["film", "plot", "cast", "score", "ending", "script", "scene", "story"]
_POSITIVE, _NEGATIVE, _THINGS = POSITIVE_WORDS, NEGATIVE_WORDS, THINGS
LABELS = ["negative", "positive"]


def build_tiny_classifier(out_dir: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT classifier (hidden 32) and a word-level tokenizer, saved like a
    real model (safetensors, config, tokenizer files)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = sorted(set(_POSITIVE + _NEGATIVE + _THINGS + ["a", "truly", "number", ","]))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + [str(i) for i in range(200)]
    # transformers 5 has one (tokenizers-backed) BertTokenizer; BertTokenizerFast is an alias of it
    tok = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    # num_labels reaches PreTrainedConfig through the **kwargs its dataclass __init__ accepts at
    # run time (`wrap_init_to_accept_kwargs`) but does not declare
    config = BertConfig(  # type: ignore[call-arg]
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, num_labels=2, id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)}, pad_token_id=0, initializer_range=0.1)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def write_rows(path: Path, n: int = 64, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = LABELS[i % 2]
            words = _POSITIVE if label == "positive" else _NEGATIVE
            writer.writerow([f"a {rng.choice(words)} {rng.choice(_THINGS)}, truly "
                             f"{rng.choice(words)} number {i}", label])
    return Path(path)


def tiny_recipe(strategy: str, tmp_path: Path, options: dict[str, Any] | None = None,
                **train: Any) -> Path:
    """Write a tiny model, data and a recipe for `strategy` under `tmp_path`; return the
    recipe file's path (`load_recipe(path)` reads it). `options` become `[method]` keys,
    `train` overrides `[train]` keys."""
    import tomli_w

    tmp_path = Path(tmp_path)
    model_dir = build_tiny_classifier(tmp_path / "tiny-model")
    data = write_rows(tmp_path / "tiny.csv")
    recipe = {
        "name": f"tiny-{strategy}",
        "model": {"path": str(model_dir)},
        "task": {"type": "classification", "labels": LABELS},
        "data": {"train": str(data), "eval_fraction": 0.25, "max_length": 24, "seed": 0},
        "method": {"strategy": strategy, **(options or {})},
        "train": {"epochs": 3, "batch_size": 8, "lr": 1e-2, "seed": 0, "threads": 1,
                  "log_every": 1, "device": "cpu", "scheduler": "constant", **train},
        "eval": {"before_training": True},
        "early_stopping": {"enabled": False},
        "output": {"dir": str(tmp_path / "runs" / strategy)},
    }
    path = tmp_path / f"tiny-{strategy}.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    return path


def check_strategy(strategy: str, tmp_path: Path, options: dict[str, Any] | None = None,
                   min_accuracy: float | None = None, **train: Any) -> Any:
    """Train `strategy` on a tiny model; assert the eval loss falls and the saved model reloads
    carrying the training. `options`: `[method]` keys; `min_accuracy`: also assert the reloaded
    model labels at least this share of the tiny data right (e.g. 0.9); `train` overrides
    `[train]` keys (e.g. `epochs=5`, `lr=1e-3`). Returns the `RunResult` (`run_dir`,
    `model_dir`, `status`, `best`, `best_metrics`...) for further checks."""
    import torch

    from .engine import run_recipe
    from .events import EVENTS_FILE, EvalEvent, read_events
    from .recipe import load_recipe

    recipe = load_recipe(tiny_recipe(strategy, tmp_path, options, **train))
    result = run_recipe(recipe)
    assert result.status == "completed", f"{strategy}: the run ended {result.status}"
    losses = [e.metrics["eval_loss"] for e in read_events(result.run_dir / EVENTS_FILE)
              if isinstance(e, EvalEvent)]
    assert len(losses) >= 2 and min(losses[1:]) < losses[0], (
        f"{strategy}: the eval loss never fell below the untrained model's ({losses})")
    assert result.model_dir is not None, f"{strategy}: no model was saved"

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(result.model_dir)
    with (Path(tmp_path) / "tiny.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    batch = tok([r["text"] for r in rows], return_tensors="pt", padding=True)
    base = AutoModelForSequenceClassification.from_pretrained(Path(tmp_path) / "tiny-model").eval()
    with torch.no_grad():
        logits = reload(result.model_dir)(**batch).logits
        untrained = base(**batch).logits
    assert torch.isfinite(logits).all(), f"{strategy}: the reloaded model gives non-finite logits"
    assert not torch.allclose(logits, untrained, atol=1e-4), (
        f"{strategy}: the reloaded model computes what the untrained base does: save() lost the training")
    if min_accuracy:
        predicted = logits.argmax(-1).tolist()
        accuracy = sum(LABELS[p] == r["label"] for p, r in zip(predicted, rows)) / len(rows)
        assert accuracy >= min_accuracy, (f"{strategy}: the reloaded model is right on {accuracy:.0%} "
                                          f"of the tiny data (want >= {min_accuracy:.0%})")
    return result


def reload(model_dir: Path) -> Any:
    """Load a run's saved model as a stock user would: a PEFT adapter over its base, or a
    full transformers model."""
    from transformers import AutoModelForSequenceClassification

    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        from peft import AutoPeftModelForSequenceClassification

        return AutoPeftModelForSequenceClassification.from_pretrained(model_dir).eval()
    return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()


def check_task(task_type: str, tmp_path: Path, data: Path, *, strategy: str = DEFAULT_STRATEGY,
               options: dict[str, Any] | None = None, task: dict[str, Any] | None = None,
               data_keys: dict[str, Any] | None = None, model_dir: Path | None = None,
               prompts: list[str] | None = None, **train: Any) -> Any:
    """Run the task `task_type` end to end on a tiny model: train (with `strategy` and its
    `options`), evaluate, save, reload, answer `prompts` (`pefttool predict` or `generate`,
    whichever the task answers through), export. `data`: a CSV/JSONL file the task reads (a
    quarter is held out); `task`: `[task]` keys beyond `type`; `data_keys`: `[data]` keys
    (columns...); `model_dir`: a model the task's Auto class loads (default: a tiny random BERT,
    which every sequence/token/QA head loads from); `train` overrides `[train]` keys. Asserts
    what a user would see go wrong; returns the `RunResult`."""
    import json
    import math

    import tomli_w

    from .engine import run_recipe
    from .events import EVENTS_FILE, EvalEvent, read_events
    from .generate import generate
    from .recipe import load_recipe
    from .runfolder.rundir import METRICS_FILE
    from .tasks import get_task
    from .trained import export, load_trained, predict

    tmp_path = Path(tmp_path)
    model_dir = Path(model_dir) if model_dir is not None else build_tiny_classifier(tmp_path / "tiny-model")
    recipe_data = {
        "name": f"tiny-{task_type}-{strategy}",
        "model": {"path": str(model_dir)},
        "task": {"type": task_type, **(task or {})},
        "data": {"train": str(data), "eval_fraction": 0.25, "max_length": 24, "seed": 0,
                 **(data_keys or {})},
        "method": {"strategy": strategy, **(options or {})},
        "train": {"epochs": 3, "batch_size": 8, "lr": 1e-2, "seed": 0, "threads": 1,
                  "log_every": 1, "device": "cpu", "scheduler": "constant", **train},
        "eval": {"before_training": True},
        "early_stopping": {"enabled": False},
        "output": {"dir": str(tmp_path / "runs" / f"{task_type}-{strategy}")},
    }
    path = tmp_path / f"tiny-{task_type}-{strategy}.toml"
    path.write_text(tomli_w.dumps(recipe_data), encoding="utf-8")
    recipe = load_recipe(path)
    what = f"task {task_type} ({strategy})"
    result = run_recipe(recipe)
    assert result.status == "completed", f"{what}: the run ended {result.status}"
    metric = get_task(recipe).default_metric
    evals = [e.metrics for e in read_events(result.run_dir / EVENTS_FILE) if isinstance(e, EvalEvent)]
    assert len(evals) >= 2, f"{what}: fewer than two evaluations ({evals})"
    losses = [m["eval_loss"] for m in evals if "eval_loss" in m]
    assert not losses or min(losses[1:]) < losses[0], (
        f"{what}: the eval loss never fell below the untrained model's ({losses})")
    final = json.loads((result.run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    figures = final.get("best_metrics") or final
    value = figures.get(metric) if isinstance(figures, dict) else None
    assert isinstance(value, (int, float)) and math.isfinite(value), (
        f"{what}: metrics.json gives no finite {metric} ({final})")
    assert result.model_dir is not None, f"{what}: no model was saved"

    trained = load_trained(result.run_dir)
    prompts = prompts or ["a good film", "a bad plot"]
    if get_task(recipe).inference_command == "predict":
        answers = predict(trained, prompts)
        assert len(answers) == len(prompts), f"{what}: predict gave {len(answers)} answers for {len(prompts)} texts"
        assert all(a.answer for a in answers), f"{what}: predict gave an empty answer ({answers})"
    else:
        reply = generate(trained, prompts[0], max_new_tokens=4, greedy=True)
        assert isinstance(reply, str), f"{what}: generate gave {reply!r}"
    out = export(result.run_dir, tmp_path / f"export-{task_type}-{strategy}")
    assert (out / "config.json").is_file() or (out / "adapter_config.json").is_file(), (
        f"{what}: the export holds no model ({sorted(p.name for p in out.iterdir())})")
    if (out / "adapter_config.json").is_file():
        merged = export(result.run_dir, tmp_path / f"merged-{task_type}-{strategy}", merge=True)
        assert (merged / "config.json").is_file(), f"{what}: the merged export holds no config.json"
    return result
