"""The built-in strategies (full, lora, qlora) on tiny models: what trains, that it learns,
that what is saved loads in stock transformers/PEFT, and the QLoRA CPU gradient guard."""

from __future__ import annotations

import pytest
import torch

from pefttool.errors import PefttoolError, RecipeError
from pefttool.models import load_model, load_tokenizer
from pefttool.plugins import get_plugin_host
from pefttool.recipe import load_recipe
from tiny_models import build_tiny_causal, tiny_rows

STRATEGIES = ["full", "lora", "qlora"]
STEPS = 15  # random tiny models sit near log(2) for a few steps before they move


@pytest.fixture(scope="module")
def host():
    return get_plugin_host()


def _build(host, recipe_path, **load):
    recipe = load_recipe(recipe_path)
    strategy = host.strategies[recipe.method.strategy]
    options = recipe.strategy_options
    strategy.check(recipe, options)
    tok = load_tokenizer(recipe)
    model = load_model(recipe, strategy, options, tokenizer=tok, **load)
    torch.manual_seed(0)
    return recipe, strategy, options, tok, strategy.wrap(model, recipe, options)


def _batch(tok, task, n=16):
    rows = tiny_rows(n)
    if task == "classification":
        enc = tok([t for t, _ in rows], padding=True, truncation=True, max_length=24,
                  return_tensors="pt")
        enc["labels"] = torch.tensor([int(lab == "positive") for _, lab in rows])
    else:
        enc = tok([f"{t} -> {lab}" for t, lab in rows], padding=True, truncation=True,
                  max_length=24, return_tensors="pt")
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        enc["labels"] = labels
        enc.pop("token_type_ids", None)  # Llama takes none
    return dict(enc)


def _randomize_lora_b(model, seed=1):
    """LoRA B starts at zero (the adapter is a no-op); make it non-zero for comparisons."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# ---------------------------------------------------------------- what trains


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_classifier_trainable_counts(host, tiny_recipe, strategy):
    recipe, strat, options, tok, model = _build(host, tiny_recipe(strategy))
    info = strat.describe(model)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    if strategy == "full":
        assert info["params_trainable"] == info["params_total"] == sum(
            p.numel() for p in model.parameters())
        return
    # only adapters and the head (PEFT's modules_to_save copy of `classifier`)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), sorted(trainable)
    head = sum(v for n, v in trainable.items() if "modules_to_save" in n)
    assert head == 32 * 2 + 2  # classifier Linear(32 → 2)
    # r * (in + out) for every linear layer except the head: q,k,v,o 32→32, 32→64, 64→32, pooler
    r = options.r
    expected = 2 * (4 * r * 64 + 2 * r * 96) + r * 64
    assert sum(v for n, v in trainable.items() if "lora_" in n) == expected
    assert info["params_trainable"] == expected + head


@pytest.mark.parametrize("strategy", ["lora", "qlora"])
def test_causal_lm_no_lora_on_lm_head(host, tiny_recipe, strategy):
    recipe, strat, options, tok, model = _build(host, tiny_recipe(strategy, task="causal-lm"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert not any("lm_head" in n for n in names)
    targeted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_qlora_keeps_head_full_precision_and_quantizes_the_rest(host, tiny_recipe):
    import bitsandbytes as bnb

    recipe, strat, options, tok, model = _build(host, tiny_recipe("qlora"))
    base = model.base_model.model
    head = base.classifier.modules_to_save["default"]
    assert type(head) is torch.nn.Linear and head.weight.requires_grad
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 6 + 1  # 6 linears per layer + pooler
    # the CPU guard is on every 4-bit layer (see test_qlora_gradient_guard)
    assert all(m.support_avx512bf16_for_cpu is False for m in four_bit)


def test_qlora_describe_counts_logical_params(host, tiny_recipe):
    from pefttool.strategy import Strategy

    _, lora, _, _, lora_model = _build(host, tiny_recipe("lora"))
    _, qlora, _, _, q_model = _build(host, tiny_recipe("qlora"))
    lora_info, q_info = lora.describe(lora_model), qlora.describe(q_model)
    # 4-bit params count as the weights they stand for, so totals match the fp32 model
    assert q_info["params_total"] == lora_info["params_total"]
    assert q_info["params_trainable"] == lora_info["params_trainable"]
    # the base class's ×2 rule (uint8 storage: two 4-bit values a byte) agrees
    base_info = Strategy.describe(qlora, q_model)
    assert base_info["params_total"] == q_info["params_total"]
    assert q_info["model_memory_mb"] <= lora_info["model_memory_mb"]


def test_lora_target_modules_matching_nothing_is_a_recipe_error(host, tiny_recipe):
    path = tiny_recipe("lora", **{"method.target_modules": ["query", "q_proj"]})
    with pytest.raises(RecipeError) as err:
        _build(host, path)
    problem = err.value.problems
    assert len(problem) == 1 and problem[0].startswith("method.target_modules: 'q_proj'")
    assert "query" in problem[0] and "dense" in problem[0]  # the real layer names are listed


def test_lora_explicit_target_modules(host, tiny_recipe):
    path = tiny_recipe("lora", **{"method.target_modules": ["query", "value"]})
    _, _, _, _, model = _build(host, path)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters()
               if "lora_A" in n}
    assert adapted == {"query", "value"}


def test_qlora_check_without_bitsandbytes(host, tiny_recipe, monkeypatch):
    import sys

    recipe = load_recipe(tiny_recipe("qlora"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    with pytest.raises(PefttoolError, match=r"^QLoRA needs bitsandbytes: pip install bitsandbytes$"):
        host.strategies["qlora"].check(recipe, recipe.strategy_options)


def test_qlora_load_kwargs(host, tiny_recipe):
    recipe = load_recipe(tiny_recipe("qlora", **{"method.quant_type": "fp4",
                                                 "method.compute_dtype": "bfloat16",
                                                 "method.modules_to_save": ["pooler"]}))
    kwargs = host.strategies["qlora"].load_kwargs(recipe, recipe.strategy_options)
    assert set(kwargs) == {"quantization_config"}
    q = kwargs["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "fp4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert {"classifier", "score", "lm_head", "pooler"} <= set(q.llm_int8_skip_modules)


@pytest.mark.parametrize("model_dtype, option, expected", [
    ("bfloat16", "auto", torch.bfloat16),   # follows the model's dtype
    ("float32", "auto", torch.float32),
    ("auto", "auto", torch.float32),        # no CUDA here: fp32
    ("bfloat16", "float32", torch.float32),  # an explicit option wins
])
def test_qlora_compute_dtype_follows_model_dtype(host, tiny_recipe, model_dtype, option, expected):
    recipe = load_recipe(tiny_recipe("qlora", **{"model.dtype": model_dtype,
                                                 "method.compute_dtype": option}))
    q = host.strategies["qlora"].load_kwargs(recipe, recipe.strategy_options)["quantization_config"]
    assert q.bnb_4bit_compute_dtype == expected


# ---------------------------------------------------------------- it learns


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_few_steps_lower_the_loss(host, tiny_recipe, strategy, task):
    recipe, strat, options, tok, model = _build(host, tiny_recipe(strategy, task=task))
    batch = _batch(tok, task)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    losses = []
    for _ in range(STEPS):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    print(strategy, task, [round(x, 3) for x in losses])
    assert losses[-1] < losses[0] * 0.93, losses


# ---------------------------------------------------------------- what is saved loads elsewhere


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_lora_adapter_reloads_in_stock_peft(host, tiny_recipe, tmp_path, task):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    recipe, strat, options, tok, model = _build(host, tiny_recipe("lora", task=task))
    _randomize_lora_b(model)
    if task == "classification":
        with torch.no_grad():
            model.base_model.model.classifier.modules_to_save["default"].weight.mul_(3)
    batch = _batch(tok, task, n=4)
    expected = _logits(model, batch)
    out = tmp_path / "adapter"
    strat.save(model, out, recipe, options)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()

    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    base = auto.from_pretrained(recipe.resolve_path(recipe.model.path))
    reloaded = PeftModel.from_pretrained(base, out)
    torch.testing.assert_close(_logits(reloaded, batch), expected, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_qlora_adapter_reloads_in_stock_peft(host, tiny_recipe, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from pefttool_qlora.quant import guard_cpu_4bit

    recipe, strat, options, tok, model = _build(host, tiny_recipe("qlora"))
    _randomize_lora_b(model)
    batch = _batch(tok, "classification", n=4)
    expected = _logits(model, batch)
    out = tmp_path / "adapter"
    strat.save(model, out, recipe, options)
    assert (out / "adapter_model.safetensors").is_file()
    assert not list(out.glob("model*.safetensors"))  # an adapter, not the 4-bit base

    kwargs = strat.load_kwargs(recipe, options)
    base = AutoModelForSequenceClassification.from_pretrained(
        recipe.resolve_path(recipe.model.path), **kwargs)
    guard_cpu_4bit(base)  # same kernels as the trained model (see the gradient guard test)
    reloaded = PeftModel.from_pretrained(base, out)
    torch.testing.assert_close(_logits(reloaded, batch), expected, rtol=0, atol=1e-6)
    # the adapter also loads onto the full-precision base (what a user deploys)
    fp32 = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(recipe.resolve_path(recipe.model.path)), out)
    assert _logits(fp32, batch).shape == expected.shape


def test_full_saves_a_model_transformers_loads(host, tiny_recipe, tmp_path):
    from transformers import AutoModelForSequenceClassification

    recipe, strat, options, tok, model = _build(host, tiny_recipe("full"))
    with torch.no_grad():
        model.classifier.weight.mul_(3)
    batch = _batch(tok, "classification", n=4)
    expected = _logits(model, batch)
    strat.save(model, tmp_path / "model", recipe, options)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(_logits(reloaded, batch), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- QLoRA on CPU: the gradient guard
#
# On AVX512-BF16 CPUs a bitsandbytes Linear4bit forward in eval mode with no grad repacks its
# weight for a bf16 inference kernel (gemv_4bit) that has no autograd formula; training after
# an eval pass then gets wrong LoRA gradients. `QloraStrategy.wrap` switches that repack off.
# Measured on this machine's AMD EPYC (AVX512-BF16), tiny Llama hidden 64, r=4, fp32 compute,
# LoRA B randomised: relative gradient error per LoRA tensor vs the dequantized fp32 reference
#   guarded:   median 0,        max 0            (bf16 compute: median 1.2e-2, max 2.0e-2)
#   unguarded: median 0.99,     max 1.04         (torch also warns "autograd kernel was not
#              registered ... silently incorrect behavior")
# Unguarded, models whose in_features < 64 (one quant block) crash in the repack instead, and
# layers with a bias fail in backward ("a view of a leaf Variable ... in-place operation").


@pytest.fixture(scope="module")
def causal64_dir(tmp_path_factory):
    # hidden 64: the repack needs in_features ≥ the 64-value quant block to run at all
    return build_tiny_causal(tmp_path_factory.mktemp("causal64"), hidden=64, heads=2)


def _lora_grad_errors(host, tmp_path, model_dir, guard: bool, compute="float32"):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    from tiny_models import write_tiny_recipe

    q_recipe = write_tiny_recipe(tmp_path, model_dir, "qlora", "causal-lm", name="q",
                                 **{"method.compute_dtype": compute})
    _, _, _, _, qmodel = _build(host, q_recipe)
    _, _, _, _, ref = _build(host, write_tiny_recipe(tmp_path, model_dir, "lora", "causal-lm",
                                                     name="ref"))
    # the reference: each 4-bit weight dequantized into fp32, the same LoRA weights
    qmods = dict(qmodel.named_modules())
    qparams = dict(qmodel.named_parameters())
    four_bit = 0
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(qmods.get(name), bnb.nn.Linear4bit):
                w = qmods[name].weight
                mod.weight.copy_(F.dequantize_4bit(w.data, w.quant_state).float())
                four_bit += 1
        _randomize_lora_b(ref)
        for name, p in ref.named_parameters():
            if p.requires_grad:
                qparams[name].copy_(p)
    assert four_bit == 2 * 7
    if not guard:  # undo the guard: what bitsandbytes does by default
        for mod in qmodel.modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                mod.support_avx512bf16_for_cpu = F.has_avx512bf16()

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 5000, (4, 12), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    qmodel.eval()  # an eval pass first: this is what triggers the repack
    with torch.no_grad():
        qmodel(**batch)
    qmodel.train()
    ref.train()
    qmodel(**batch).loss.backward()
    ref(**batch).loss.backward()
    ref_params = dict(ref.named_parameters())
    errors = []
    for name, p in qmodel.named_parameters():
        if p.requires_grad:
            want = ref_params[name].grad
            errors.append(((p.grad - want).norm() / want.norm()).item())
    assert len(errors) == 2 * 2 * 7
    return torch.tensor(errors)


def test_qlora_gradient_guard(host, tmp_path, causal64_dir):
    errors = _lora_grad_errors(host, tmp_path, causal64_dir, guard=True)
    assert errors.max() < 1e-3, errors  # measured: exactly 0 with fp32 compute


def test_qlora_gradient_guard_bf16_compute(host, tmp_path, causal64_dir):
    errors = _lora_grad_errors(host, tmp_path, causal64_dir, guard=True, compute="bfloat16")
    assert errors.max() < 5e-2, errors  # measured: median 1.2e-2, max 2.0e-2


def test_qlora_without_guard_is_wrong_on_avx512_bf16(host, tmp_path, causal64_dir):
    import warnings

    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks, nothing to guard")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "autograd kernel was not registered"
        errors = _lora_grad_errors(host, tmp_path, causal64_dir, guard=False)
    assert errors.median() > 0.1, errors  # measured: median 0.99, max 1.04
