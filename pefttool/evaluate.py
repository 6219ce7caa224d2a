"""Evaluation: the model in eval mode without gradients, the task's own pass over the eval
split (pefttool/tasks/), scored by its metric table; sample replies for eval.samples."""

from __future__ import annotations

from typing import Any


def evaluate(model: Any, eval_dl: Any, data: Any, recipe: Any, tokenizer: Any, accelerator: Any) -> dict[str, float]:
    """Run the eval split through the model; returns every metric the task has."""
    import torch

    from .tasks import get_task

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            metrics = get_task(recipe).evaluate(model, eval_dl, data, recipe, tokenizer, accelerator)
    finally:
        model.train(was_training)
    return {k: round(float(v), 6) for k, v in metrics.items()}


def samples(model: Any, data: Any, recipe: Any, tokenizer: Any, accelerator: Any) -> list[dict[str, str]]:
    """Greedy replies to the first `eval.samples` held-out prompts: [{prompt, reference, reply}]."""
    import torch

    from .tasks import get_task

    n = min(recipe.eval.samples, len(data.eval_prompts or []))
    if not n:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            replies = get_task(recipe).replies(model, data, recipe, tokenizer, accelerator, limit=n)
    finally:
        model.train(was_training)
    return [{"prompt": p, "reference": a, "reply": r.strip()}
            for p, a, r in zip(data.eval_prompts, data.eval_answers, replies)]
