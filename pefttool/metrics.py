"""Small pure metric helpers (classification scores, AUROC, perplexity, exact match)."""

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


def auroc(scores: list[float], labels: list[int]) -> float | None:
    """Area under the ROC curve: the chance that a random positive row (label 1) scores above a
    random negative one (label 0), ties counting half. Computed from ranks (Mann-Whitney U);
    None when either class is absent (undefined)."""
    positives = sum(1 for t in labels if t == 1)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # tied scores share the mean of their ranks
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, t in zip(ranks, labels) if t == 1)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
