"""train.loss_chunks: the next-token loss from the hidden states in chunks, never the full
logits (pefttool/losses.py). The same loss and gradients as the model's own loss (within 1e-5
in float32) for every strategy and with packing; generation untouched; `plan` counts less."""

from __future__ import annotations

import json

import pytest
import torch

from pefttool.engine import run_recipe
from pefttool.errors import RecipeError
from pefttool.losses import loss_chunks_of, set_loss_chunks
from pefttool.recipe import load_recipe
from pefttool.settled import DEFAULT_LOSS_CHUNKS, settle
from tiny_models import write_tiny_recipe


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    """Tiny batches hold a few dozen label tokens: chunks of any size, so several are made."""
    import pefttool.losses

    monkeypatch.setattr(pefttool.losses, "MIN_CHUNK_TOKENS", 1)


def _tiny_lora_model(lm_head: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    targets = ["q_proj", "v_proj"] + (["lm_head"] if lm_head else [])
    # (dropout in a LoRA'd head draws its masks over the label tokens only, not over every
    # position: the same distribution, other draws; so it is off where the head is LoRA'd)
    return get_peft_model(LlamaForCausalLM(config), LoraConfig(
        r=4, target_modules=targets, lora_dropout=0.0 if lm_head else 0.1, init_lora_weights=False))


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (3, 17))
    labels = ids.clone()
    labels[:, :5] = -100          # a prompt: no loss, no logits needed
    labels[2, 10:] = -100         # a shorter row, padded
    mask = torch.ones_like(ids)
    mask[2, 12:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, chunks):
    set_loss_chunks(model, chunks)
    model.zero_grad()
    torch.manual_seed(2)          # the same dropout masks both ways
    out = model(**_batch())
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lm_head", [False, True], ids=["tied-head", "lora-on-the-tied-head"])
def test_the_chunked_loss_and_its_gradients_equal_the_models_own(lm_head):
    model = _tiny_lora_model(lm_head)
    model.train()
    own, own_grads = _loss_and_grads(model, 0)
    assert own.logits is not None
    for chunks in (1, 3, 1000):   # 1000: more chunks than label tokens
        out, grads = _loss_and_grads(model, chunks)
        assert out.get("logits") is None           # never made
        assert out.loss.item() == pytest.approx(own.loss.item(), abs=1e-5)
        for name, grad in own_grads.items():
            assert torch.allclose(grads[name], grad, atol=1e-5), name
        assert any(g.abs().sum() > 0 for n, g in grads.items() if "lm_head" in n) == lm_head


def test_per_token_log_probabilities_and_evaluation_without_grad():
    model = _tiny_lora_model(False).eval()
    batch = _batch()
    with torch.no_grad():
        set_loss_chunks(model, 0)
        own = model(**batch)
        set_loss_chunks(model, 4)
        out = model(**batch)
    logits = own.logits[:, :-1].double()
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    expected = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    assert torch.equal(out.label_mask, mask)
    assert torch.allclose(out.token_logps.double(), expected, atol=1e-5)
    assert (out.token_logps[~mask] == 0).all()
    assert out.loss.item() == pytest.approx(own.loss.item(), abs=1e-5)


def test_a_batch_without_label_tokens_is_a_zero_loss_still_in_the_graph():
    model = _tiny_lora_model(False)
    batch = _batch()
    batch["labels"][:] = -100
    set_loss_chunks(model, 4)
    out = model(**batch)
    out.loss.backward()
    assert out.loss.item() == 0.0


def test_a_small_batch_is_one_chunk(monkeypatch):
    """Below MIN_CHUNK_TOKENS label tokens a chunk's overhead outweighs its memory: one chunk."""
    import pefttool.losses as L

    monkeypatch.setattr(L, "MIN_CHUNK_TOKENS", 256)
    calls = []
    head = torch.nn.Linear(8, 50)
    counted = lambda module, args, out: calls.append(args[0].shape[0])  # noqa: E731
    head.register_forward_hook(counted)
    labels = torch.randint(0, 50, (2, 100))
    L.chunked_causal_loss(torch.randn(2, 100, 8, requires_grad=True), labels, head, 8)
    assert calls == [198]                       # 2 x 99 label tokens: one chunk
    calls.clear()
    L.chunked_causal_loss(torch.randn(8, 129, 8), torch.randint(0, 50, (8, 129)), head, 8)
    assert calls == [256, 256, 256, 256]        # 1,024 tokens in 8 chunks would be 128 each


def test_generation_and_a_forward_without_labels_are_the_models_own():
    model = _tiny_lora_model(False).eval()
    ids = _batch()["input_ids"][:1, :5]
    set_loss_chunks(model, 0)
    plain = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    set_loss_chunks(model, 8)
    assert loss_chunks_of(model) == 8
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=4, do_sample=False), plain)
    assert model(input_ids=ids).logits.shape == (1, 5, 300)


def _events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def _step_losses(run_dir):
    events = _events(run_dir)
    steps = [e["loss"] for e in events if e["type"] == "step"]
    evals = [e["metrics"]["eval_loss"] for e in events if e["type"] == "eval"]
    return steps, evals


def _trained(run_dir):
    from safetensors.torch import load_file

    state = {}
    for file in sorted((run_dir / "model").glob("*.safetensors")):
        state.update(load_file(file))
    return state


@pytest.mark.parametrize("strategy,packing", [("lora", False), ("full", False), ("qlora", False),
                                              ("lora", True)],
                         ids=["lora", "full", "qlora", "lora-packed"])
def test_a_run_trains_the_same_with_and_without_chunks(tmp_path, tiny_causal_dir, strategy, packing):
    runs = {}
    for chunks in (0, 3):
        path = write_tiny_recipe(tmp_path, tiny_causal_dir, strategy, task="causal-lm", name=f"c{chunks}",
                                 rows=32, overrides={"train.max_steps": 3, "train.loss_chunks": chunks,
                                                     "data.packing": packing, "train.epochs": 1})
        result = run_recipe(load_recipe(path))
        assert result.status == "completed"
        runs[chunks] = result.run_dir
    said = [e["message"] for e in _events(runs[3]) if e["type"] == "log" and e["message"].startswith("loss:")]
    assert said == ["loss: from the hidden states in up to 3 chunks of label tokens (at least 1 "
                    "each), never the full logits (train.loss_chunks = 3)"]
    (steps0, evals0), (steps3, evals3) = _step_losses(runs[0]), _step_losses(runs[3])
    assert len(steps0) >= 2 and steps3 == pytest.approx(steps0, abs=1e-5)
    assert evals3 == pytest.approx(evals0, abs=1e-5)
    a, b = _trained(runs[0]), _trained(runs[3])
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


def test_settled_chunks_default_off_switch_and_the_tasks_without_a_vocabulary(tmp_path, tiny_causal_dir,
                                                                             tiny_classifier_dir):
    causal = load_recipe(write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", task="causal-lm", name="a"))
    run = settle(causal)
    assert run.loss_chunks == DEFAULT_LOSS_CHUNKS and "default" in run.loss_chunks_why
    off = load_recipe(write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", task="causal-lm", name="b",
                                        overrides={"train.loss_chunks": 0}))
    assert settle(off).loss_chunks == 0
    classifier = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", name="c"))
    assert settle(classifier).loss_chunks == 0
    with pytest.raises(RecipeError, match=r"d.toml: train.loss_chunks: 4 chunks a loss over a vocabulary, "
                                          r"and task 'classification' has none; remove it"):
        load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", name="d",
                                      overrides={"train.loss_chunks": 4}))
