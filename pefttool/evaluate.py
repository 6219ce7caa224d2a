"""Evaluation passes: one pass of the eval split through the model, whose outputs the task's
metric table scores (pefttool/tasks/); greedy generation of answers for exact match."""

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


def classification_pass(model: Any, eval_dl: Any, num_classes: int, accelerator: Any) -> Any:
    """Predictions, labels, mean loss (and, for 2 labels, the second label's probability)."""
    import torch

    from .tasks.classification import ClassificationOutputs

    preds: list[int] = []
    labels: list[int] = []
    scores: list[float] = []
    # Summed over processes, so every process computes the same metrics (and so takes the
    # same early-stopping decision).
    sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for batch in eval_dl:
        out = model(**batch)
        sums[0] += out.loss.double()
        sums[1] += 1
        positive = out.logits.float().softmax(-1)[:, -1]
        p, t, s = accelerator.gather_for_metrics((out.logits.argmax(-1), batch["labels"], positive))
        preds += p.tolist()
        labels += t.tolist()
        scores += s.tolist()
    sums = accelerator.reduce(sums, reduction="sum")
    return ClassificationOutputs(preds=preds, labels=labels, num_classes=num_classes,
                                 loss=float(sums[0] / sums[1].clamp(min=1)),
                                 positive_scores=scores if num_classes == 2 else None)


def causal_lm_pass(model: Any, eval_dl: Any, accelerator: Any) -> float:
    """The mean loss per trained token, over all processes."""
    import torch

    # Token-weighted mean: the model's loss is a mean over a batch's unmasked tokens.
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    token_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for batch in eval_dl:
        out = model(**batch)
        n = (batch["labels"][:, 1:] != -100).sum()
        loss_sum += out.loss.double() * n
        token_sum += n
    loss_sum, token_sum = accelerator.reduce(loss_sum), accelerator.reduce(token_sum)
    return (loss_sum / token_sum.clamp(min=1)).item()


def samples(model: Any, data: Any, recipe: Any, tokenizer: Any, accelerator: Any) -> list[dict[str, str]]:
    """Greedy replies to the first `eval.samples` held-out prompts: [{prompt, reference, reply}]."""
    import torch

    n = min(recipe.eval.samples, len(data.eval_prompts or []))
    if not n:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            replies = _generate(model, data, recipe, tokenizer, accelerator, limit=n)
    finally:
        model.train(was_training)
    return [{"prompt": p, "reference": a, "reply": r.strip()}
            for p, a, r in zip(data.eval_prompts, data.eval_answers, replies)]


def _generate(model: Any, data: Any, recipe: Any, tokenizer: Any, accelerator: Any,
              limit: int | None = None) -> list[str]:
    """Greedy-generate an answer for each eval prompt (the first `limit` of them)."""
    unwrapped = accelerator.unwrap_model(model)
    predictions: list[str] = []
    size = recipe.eval.batch_size
    todo = data.eval_prompts[:limit] if limit is not None else data.eval_prompts
    for i in range(0, len(todo), size):
        prompts = todo[i:i + size]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                        add_special_tokens=False).to(accelerator.device)
        out = unwrapped.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=recipe.eval.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        predictions += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return predictions
