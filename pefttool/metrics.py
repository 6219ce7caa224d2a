"""Small pure metric helpers (classification scores, perplexity, exact match)."""

from __future__ import annotations

import math
import re


def accuracy(preds: list[int], labels: list[int]) -> float:
    if not labels:
        return 0.0
    return sum(int(p == t) for p, t in zip(preds, labels)) / len(labels)


def macro_f1(preds: list[int], labels: list[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 (a class absent from both preds and labels scores 0)."""
    scores = []
    for c in range(num_classes):
        tp = sum(1 for p, t in zip(preds, labels) if p == c and t == c)
        fp = sum(1 for p, t in zip(preds, labels) if p == c and t != c)
        fn = sum(1 for p, t in zip(preds, labels) if p != c and t == c)
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return sum(scores) / num_classes if num_classes else 0.0


def perplexity(mean_loss: float) -> float:
    # exp overflows past ~709; a perplexity that large means "no idea" either way.
    return math.exp(min(mean_loss, 700.0))


def normalize_answer(text: str) -> str:
    """First line, lower-cased, punctuation and extra spaces removed."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(r"[^\w\s]", " ", line.lower())
    return " ".join(line.split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    if not references:
        return 0.0
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return hits / len(references)


def contains_answer(predictions: list[str], references: list[str]) -> float:
    """Share of answers whose first line contains the reference as whole words.

    Looser than exact match: "This review is negative." counts for "negative". It shows what a
    model knows before it has learnt the answer format (reported, not used for stopping).
    """
    if not references:
        return 0.0
    hits = 0
    for p, r in zip(predictions, references):
        ref = normalize_answer(r)
        hits += bool(ref) and f" {ref} " in f" {normalize_answer(p)} "
    return hits / len(references)
