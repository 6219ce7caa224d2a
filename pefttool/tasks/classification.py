"""Sequence classification: one label per row, a new classifier head (SEQ_CLS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..metrics import accuracy, auroc, macro_f1
from .base import Metric, Task


@dataclass
class ClassificationOutputs:
    """What an evaluation pass over a classifier gathers (over all processes)."""

    preds: list[int]
    labels: list[int]
    num_classes: int
    loss: float
    # the probability of label id 1 (the second of task.labels) per row; binary tasks only
    positive_scores: list[float] | None = field(default=None)


def _auroc(o: ClassificationOutputs) -> float | None:
    if o.num_classes != 2 or o.positive_scores is None:
        return None
    return auroc(o.positive_scores, o.labels)


class ClassificationTask(Task):
    type = "classification"
    model_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    model_noun = "a classifier"
    default_metric = "accuracy"
    has_labels = True
    sequence_labels = False
    data_keys = ("model.path", "data.train", "data.eval", "data.text_column", "data.label_column")
    prompt_noun = "a text to classify"
    metrics = {
        "accuracy": Metric("accuracy", lambda o: accuracy(o.preds, o.labels), higher_is_better=True,
                           description="share of rows labelled right", share_of_rows=True),
        "macro_f1": Metric("macro_f1", lambda o: macro_f1(o.preds, o.labels, o.num_classes),
                           higher_is_better=True, description="unweighted mean of per-label F1",
                           share_of_rows=True),
        "auroc": Metric("auroc", _auroc, higher_is_better=True,
                        description="binary tasks: area under the ROC curve of the second label's "
                                    "probability (threshold-free ranking quality)"),
        "eval_loss": Metric("eval_loss", lambda o: o.loss, higher_is_better=False, selectable=False,
                            description="mean cross-entropy per batch"),
    }

    def data_kind(self, recipe: Any) -> str:
        return "labelled"

    def check_recipe(self, recipe: Any) -> list[str]:
        problems = super().check_recipe(recipe)
        labels = recipe.task.labels
        if recipe.eval.metric == "auroc" and labels is not None and len(labels) != 2:
            problems.append(f"eval.metric: 'auroc' needs a binary task and task.labels has "
                            f"{len(labels)} labels; use \"accuracy\" or \"macro_f1\"")
        return problems

    def check_data(self, recipe: Any, data: Any) -> None:
        if recipe.metric != "auroc":
            return
        from ..errors import DataError

        names = data.label_names or []
        if len(names) != 2:
            raise DataError(f"eval.metric: 'auroc' needs a binary task and the data has "
                            f"{len(names)} labels ({', '.join(names)}); use \"accuracy\" or "
                            f"\"macro_f1\"")
        counts = data.stats.get("eval", {}).get("label_counts") or {}
        missing = [name for name, n in counts.items() if n == 0]
        if missing:
            raise DataError(f"eval.metric: 'auroc' is undefined when the eval set has no row of "
                            f"{', '.join(map(repr, missing))}; add such rows, or use \"accuracy\"")

    def evaluate(self, model: Any, eval_dl: Any, data: Any, recipe: Any, tokenizer: Any,
                 accelerator: Any) -> dict[str, float]:
        return self.score(classification_pass(model, eval_dl, len(data.label_names or []),
                                               accelerator))


def classification_pass(model: Any, eval_dl: Any, num_classes: int, accelerator: Any) -> Any:
    """Predictions, labels, mean loss (and, for 2 labels, the second label's probability)."""
    import torch

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


CLASSIFICATION = ClassificationTask()
