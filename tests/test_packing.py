"""data.packing: several causal-LM examples per row, each attending only to itself.

The packed batch must train exactly what the padded one does (per-example loss equal within
1e-4), no token may see another example, the rows must be deterministic, and a packed run
must run, count real tokens and resume like any other (the resume test is a variant in
tests/test_resume.py).
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from pefttool.engine import run_recipe
from pefttool.recipe import load_recipe
from pefttool.runfolder.checkpoints import TrainState, list_checkpoints
from pefttool.data.collate import (COUNTS_KEY, Collator, PackedCollator, check_packed_attention,
                                   take_counts)
from pefttool.errors import ModelError, RecipeError
from pefttool.sampling import pack_rows
from tiny_models import write_tiny_recipe

PAD = 0


def _examples(n: int, seed: int = 0, vocab: int = 1000) -> list[dict]:
    """Instruction-shaped rows: a prompt (labels -100) then a response (labels = ids)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, response = rng.randint(2, 9), rng.randint(1, 8)
        ids = [rng.randint(1, vocab - 1) for _ in range(prompt + response)]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                     "labels": [-100] * prompt + ids[prompt:]})
    return rows


def _model(model_dir, attn: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn)
    return model.eval()


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss at each position (0 where the next label is -100)."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), shifted,
                                             ignore_index=-100, reduction="none")


def _padded_per_example(model, rows: list[dict]) -> list[float]:
    batch = Collator(pad_id=PAD, sequence_labels=True)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    losses = _token_losses(logits, batch["labels"])
    counts = (torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:] != -100).sum(1)
    return (losses.sum(1) / counts).tolist()


def _packed_per_example(model, rows: list[dict], packed: list[list[int]], **collator) -> list[float]:
    batch = PackedCollator(pad_id=PAD, **collator)([[rows[i] for i in row] for row in packed])
    counts = batch.pop(COUNTS_KEY)
    assert counts.tolist() == [sum(len(r["input_ids"]) for r in rows), len(rows)]
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    losses = _token_losses(logits, batch["labels"])
    # Walk the lines: each example is a run of positions 0, 1, 2, ... in its own line.
    out: dict[int, float] = {}
    order = [i for row in packed for i in row] if collator.get("flatten") else None
    lines = [order] if order is not None else packed
    for line_no, members in enumerate(lines):
        start = 0
        for i in members:
            n = len(rows[i]["input_ids"])
            labels = batch["labels"][line_no, start:start + n]
            assert batch["position_ids"][line_no, start:start + n].tolist() == list(range(n))
            assert labels[0] == -100  # the example's first token is never a target
            targets = int((torch.nn.functional.pad(labels, (0, 1), value=-100)[1:] != -100).sum())
            out[i] = float(losses[line_no, start:start + n].sum()) / targets
            start += n
    return [out[i] for i in range(len(rows))]


def test_pack_rows_fill_rows_deterministically_from_the_seed():
    rng = random.Random(1)
    lengths = [rng.randint(1, 64) for _ in range(500)]
    rows = pack_rows(lengths, 64, seed=3)
    assert sorted(i for row in rows for i in row) == list(range(500))  # every example once
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    # nearly full: best-fit decreasing on this data fills > 95 % of the rows' room
    assert sum(lengths) / (64 * len(rows)) > 0.95
    assert pack_rows(lengths, 64, seed=3) == rows
    assert pack_rows(lengths, 64, seed=4) != rows  # ties broken by the seed
    with pytest.raises(ValueError, match="example 1 has 65 tokens"):
        pack_rows([3, 65], 64, seed=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_per_example_loss_of_a_packed_batch_equals_the_padded_one(tiny_causal_dir, attn):
    model = _model(tiny_causal_dir, attn)
    rows = _examples(12)
    packed = pack_rows([len(r["input_ids"]) for r in rows], 24, seed=0)
    assert len(packed) < len(rows) and any(len(row) > 1 for row in packed)
    want = _padded_per_example(model, rows)
    got = _packed_per_example(model, rows, packed)
    assert got == pytest.approx(want, abs=1e-4)
    # one line for the whole batch (the flash-attention layout) trains the same
    flat = _packed_per_example(model, rows, packed, flatten=True)
    assert flat == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_token_attends_across_packed_examples(tiny_causal_dir, attn):
    model = _model(tiny_causal_dir, attn)
    a, b = _examples(2, seed=5)
    changed = dict(a, input_ids=[(t * 7 + 3) % 999 + 1 for t in a["input_ids"]])

    def b_logits(first: dict, **drop) -> torch.Tensor:
        batch = PackedCollator(pad_id=PAD)([[first, b]])
        batch.pop(COUNTS_KEY)
        batch.update(drop)
        with torch.no_grad():
            return model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, -len(b["input_ids"]):]

    assert torch.allclose(b_logits(a), b_logits(changed), atol=1e-5)
    # The test can fail: with an attention mask (or a KV cache) the model ignores the packing
    # and B sees A.
    n = len(a["input_ids"]) + len(b["input_ids"])
    mask = {"attention_mask": torch.ones(1, n, dtype=torch.long)}
    assert not torch.allclose(b_logits(a, **mask), b_logits(changed, **mask), atol=1e-3)
    assert not torch.allclose(b_logits(a, use_cache=True), b_logits(changed, use_cache=True), atol=1e-3)


def test_padding_in_a_packed_batch_is_not_counted_as_tokens():
    rows = _examples(5, seed=2)
    batch = PackedCollator(pad_id=PAD)([[rows[0], rows[1]], [rows[2]], [rows[3], rows[4]]])
    real = sum(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].numel() > real  # the short lines are padded
    assert take_counts(batch) == (real, 5)
    assert COUNTS_KEY not in batch and "attention_mask" not in batch
    # padding is never a target
    assert int((batch["labels"] != -100).sum()) == sum(
        sum(1 for x in r["labels"][1:] if x != -100) for r in rows)
    padded = Collator(pad_id=PAD, sequence_labels=True)(rows)
    assert take_counts(padded) == (real, 5)


def test_a_model_that_ignores_the_packing_is_refused(tiny_causal_dir):
    model = _model(tiny_causal_dir, "sdpa")
    check_packed_attention(model)  # a llama keeps packed examples apart

    class DropsPositions(torch.nn.Module):  # an architecture that does not read position ids
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids, **kwargs)

    with pytest.raises(ModelError, match="data.packing: this model .* attend to each other"):
        check_packed_attention(DropsPositions(model))


def test_packing_is_a_recipe_problem_outside_causal_lm(tmp_path, tiny_classifier_dir, tiny_causal_dir):
    path = write_tiny_recipe(tmp_path / "c", tiny_classifier_dir, overrides={"data.packing": True})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "data.packing: true, but task.type is 'classification'" in str(err.value)
    assert "set data.packing = false" in str(err.value)
    path = write_tiny_recipe(tmp_path / "g", tiny_causal_dir, task="causal-lm",
                             overrides={"data.packing": True, "data.group_by_length": True})
    with pytest.raises(RecipeError, match="set data.group_by_length = false"):
        load_recipe(path)


def test_a_packed_run_trains_fewer_longer_batches_and_counts_real_tokens(tmp_path, tiny_causal_dir):
    common = {"train.epochs": 1, "train.batch_size": 4, "data.max_length": 48}
    runs = {}
    for packing in (False, True):
        path = write_tiny_recipe(tmp_path / str(packing), tiny_causal_dir, task="causal-lm",
                                 overrides={**common, "data.packing": packing})
        result = run_recipe(load_recipe(path))
        assert result.status == "completed"
        events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
        assert result.best is not None
        runs[packing] = (result, events)
    plain, packed = runs[False][0], runs[True][0]
    assert packed.steps < plain.steps  # several examples per row
    logs = [e["message"] for e in runs[True][1] if e["type"] == "log"]
    assert any(m.startswith("packing: ") and " rows of up to 48 tokens" in m for m in logs)
    # both runs saw the same real tokens: padding is not counted, packing does not lose any
    seen = [TrainState.from_file(list_checkpoints(result.run_dir)[-1] / "trainer_state.json").tokens_seen
            for result, _ in runs.values()]
    assert seen[0] == seen[1] > 0, seen
