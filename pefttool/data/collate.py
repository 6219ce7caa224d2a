"""Batching: rows of token ids → padded tensors, or (`data.packing`) packed padding-free rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .common import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


@dataclass
class Collator:
    """Pads a list of rows to the longest in the batch (right padding).

    One label per row (a class id, or a float for regression) becomes a 1-D tensor; sequence
    labels are padded with -100 so the loss ignores padding. A plain class (not a closure) so
    DataLoader workers can pickle it.
    """

    pad_id: int
    sequence_labels: bool

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        if not rows:
            raise ValueError("cannot collate an empty batch")
        longest = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        labels = (torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
                  if self.sequence_labels else None)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            if labels is not None:
                labels[i, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
        if labels is None:  # one label per row: a class id, or a number (regression)
            values = [r["labels"] for r in rows]
            floats = any(isinstance(v, float) for v in values)
            labels = torch.as_tensor(values, dtype=torch.float32 if floats else torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---------------------------------------------------------------------------- packing

# A packed batch carries its (real tokens, examples) under this key: its rows hold several
# examples and some padding, and it has no attention_mask to count them from. The engine
# takes it out (`take_counts`) before the forward pass.
COUNTS_KEY = "pefttool_counts"


class PackedRows:
    """`data.packing`: a dataset whose item i is packed row i, the list of the examples
    (`dataset` rows) that `rows[i]` names. A plain map-style dataset for the DataLoader."""

    def __init__(self, dataset: Any, rows: list[list[int]]):
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> list[dict[str, Any]]:
        return [self.dataset[j] for j in self.rows[i]]


@dataclass
class PackedCollator:
    """Packed rows → a padding-free causal-LM batch, through transformers'
    `DataCollatorWithFlattening`: each row's examples are concatenated, `position_ids`
    restart at 0 for every example and the first label of each example is -100 (no token is
    trained to predict the next example).

    The batch has `position_ids` and NO attention_mask, and `use_cache=False`: transformers
    then builds a block-diagonal causal mask from the restarting position ids (sdpa, eager;
    `masking_utils.find_packed_sequence_indices`), so no token attends across examples. With
    an attention mask, or with a KV cache (which a causal LM makes by default), it would
    silently attend across them.

    `flatten=False` (sdpa/eager): one line per packed row, shorter rows padded at the end
    with a segment of their own (position ids from 0 again, labels -100), so attention costs
    rows × max_length², not (rows × max_length)². `flatten=True` (flash_attention_2): the whole
    batch as one line, no padding at all; flash attention finds the examples from the
    position ids only when the batch is a single line.
    """

    pad_id: int
    flatten: bool = False

    def __call__(self, rows: list[list[dict[str, Any]]]) -> dict[str, Any]:
        import torch
        from transformers import DataCollatorWithFlattening

        examples = sum(len(row) for row in rows)
        if not examples:
            raise ValueError("cannot collate an empty batch")
        flat = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
        groups = [[e for row in rows for e in row]] if self.flatten else rows
        lines = [flat(group, return_tensors="pt") for group in groups]
        longest = max(line["input_ids"].shape[1] for line in lines)
        ids = torch.full((len(lines), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(lines), longest), IGNORE_INDEX, dtype=torch.long)
        # padding: a segment of its own, so it attends only to itself
        positions = torch.arange(longest, dtype=torch.long).repeat(len(lines), 1)
        real = 0
        for i, line in enumerate(lines):
            n = line["input_ids"].shape[1]
            ids[i, :n] = line["input_ids"][0]
            labels[i, :n] = line["labels"][0]
            positions[i, :n] = line["position_ids"][0]
            positions[i, n:] = torch.arange(longest - n)
            real += n
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False,
                COUNTS_KEY: torch.tensor([real, examples], dtype=torch.long)}


def take_counts(batch: dict[str, Any]) -> tuple[int, int]:
    """(real tokens, examples) in a training batch; takes a packed batch's COUNTS_KEY out of
    it (the model must not see it). Padded batches count their attention mask."""
    counts = batch.pop(COUNTS_KEY, None)
    if counts is not None:
        return int(counts[0]), int(counts[1])
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum()), int(mask.shape[0])
    ids = batch["input_ids"]
    return int(ids.numel()), int(ids.shape[0])


def pack_for_training(dataset: Any, recipe: Any, pad_id: int) -> tuple[PackedRows, PackedCollator]:
    """`data.packing`: the train split as packed rows of up to `data.max_length` tokens (the
    same rows for every epoch and in a resumed run: they depend only on train.seed), and the
    collator for them."""
    from ..sampling import pack_rows

    lengths = [len(ids) for ids in dataset["input_ids"]]
    rows = pack_rows(lengths, recipe.data.max_length, recipe.train.seed)
    flatten = recipe.model.attn_implementation == "flash_attention_2"
    return PackedRows(dataset, rows), PackedCollator(pad_id, flatten=flatten)


def check_packed_attention(model: Any) -> None:
    """Refuse `data.packing` on a model that would attend across packed examples.

    Feeds example B alone, then packed after example A (position ids restarting, as
    PackedCollator makes them), and compares B's logits: a model that keeps the examples
    apart gives the same logits; one that ignores the packing sees A, as plain concatenation
    does. Raises ModelError for the latter. Eval mode, no gradients (a handful of tokens).
    """
    import torch

    from ..errors import ModelError

    a, b = [5, 6, 7, 8, 9], [10, 11, 12, 13]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            def logits(ids: list[int], positions: list[int] | None) -> torch.Tensor:
                kwargs: dict[str, Any] = {"use_cache": False}
                if positions is not None:
                    kwargs["position_ids"] = torch.tensor([positions], device=device)
                out = model(input_ids=torch.tensor([ids], device=device), **kwargs)
                return out.logits[0, -len(b):].float()

            alone = logits(b, None)
            packed = logits(a + b, list(range(len(a))) + list(range(len(b))))
            joined = logits(a + b, None)  # what attending across the examples does
    finally:
        model.train(was_training)
    leak = (packed - alone).abs().max().item()
    context = (joined - alone).abs().max().item()
    if not leak <= 0.05 * context + 1e-5:
        name = type(getattr(model, "base_model", model)).__name__
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "?")
        raise ModelError(
            f"data.packing: this model ({name}, attention '{impl}') lets packed examples attend "
            f"to each other (logits moved by {leak:.3g}, against {context:.3g} with no "
            f"separation); set data.packing = false, or try model.attn_implementation = \"sdpa\"")
