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
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

_POSITIVE = ["good", "great", "lovely", "superb", "fine", "nice", "brilliant", "pleasant"]
_NEGATIVE = ["bad", "awful", "poor", "dreadful", "boring", "ugly", "terrible", "weak"]
_THINGS = ["film", "plot", "cast", "score", "ending", "script", "scene", "story"]
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
