"""Batching: rows of token ids → padded tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .common import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


@dataclass
class Collator:
    """Pads a list of rows to the longest in the batch (right padding).

    Classification labels become a 1-D tensor; sequence labels are padded with -100 so the
    loss ignores padding. A plain class (not a closure) so DataLoader workers can pickle it.
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
        if labels is None:
            labels = torch.as_tensor([int(r["labels"]) for r in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
