"""Built-in task `classification`: one label per row, a new classifier head (SEQ_CLS).

Registered through the `pefttool_register_tasks` hook and the `pefttool` entry-point group,
like a third party's task; it uses only the public contract (`pefttool.Task`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pefttool.data.formats import LabelledRows
from pefttool.hookspecs import hookimpl
from pefttool.metrics import accuracy, auroc, macro_f1
from pefttool.tasks import Metric, Prediction, Task


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
    description = "one label per text (a classifier head): accuracy, macro F1, AUROC"
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

    def row_format(self, recipe: Any) -> Any:
        """Task contract: a text and a label per row (`LabelledRows`)."""
        return LabelledRows.from_recipe(recipe)

    def example_labels(self, input_ids: Any) -> Any:
        """Task contract (`pefttool plan`): one label id per row."""
        import torch

        return torch.zeros(input_ids.shape[:1], dtype=torch.long, device=input_ids.device)

    def check_recipe(self, recipe: Any) -> list[str]:
        """Task contract, before anything loads: the metric, the label set, and the keys a
        classifier does not read; one line per problem."""
        problems = super().check_recipe(recipe)
        labels = recipe.task.labels
        if labels is not None and len(labels) < 2:
            problems.append(f"task.labels: a classification task needs at least 2 labels (got {labels})")
        elif labels is not None and len(set(labels)) != len(labels):
            problems.append(f"task.labels: each label must appear once (got {labels})")
        fmt = recipe.task.format
        if fmt == "instruction":
            recipe.task.format = None  # what recipes resolved by earlier versions wrote out
        elif fmt is not None:
            problems.append(f"task.format: {fmt!r}, but a classification task reads a text and a "
                            f"label per row (data.text_column, data.label_column); remove "
                            f"task.format, or set task.type = \"causal-lm\"")
        d = recipe.data
        if d.system_prompt is not None:
            problems.append(f"data.system_prompt: {d.system_prompt[:40]!r} goes into a chat "
                            f"template's system turn, and a classification task renders none; "
                            f"remove it")
        problems += [f"data.{key}: {getattr(d, key)!r} applies to chat rows only (task.type = "
                     f"\"causal-lm\", task.format = \"chat\"); remove it"
                     for key, default in (("messages_column", None), ("train_on", "assistant"))
                     if getattr(d, key) != default]
        if recipe.eval.metric == "auroc" and labels is not None and len(labels) != 2:
            problems.append(f"eval.metric: 'auroc' needs a binary task and task.labels has "
                            f"{len(labels)} labels; use \"accuracy\" or \"macro_f1\"")
        return problems

    def check_data(self, recipe: Any, data: Any) -> None:
        """Task contract, once the data is read: AUROC needs two labels, both in the eval set."""
        if recipe.metric != "auroc":
            return
        from pefttool.errors import DataError

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

    def predictions(self, logits: Any, labels: list[str], recipe: Any) -> list[Prediction]:
        """Task contract (`pefttool predict`): the likeliest label and every label's probability."""
        import torch

        out = []
        for row in torch.softmax(logits.float(), dim=-1).tolist():
            names = labels if len(labels) == len(row) else [str(i) for i in range(len(row))]
            best = max(range(len(row)), key=row.__getitem__)
            out.append(Prediction(names[best], {names[i]: round(p, 6) for i, p in enumerate(row)}))
        return out

    def evaluate(self, model: Any, eval_dl: Any, data: Any, recipe: Any, tokenizer: Any,
                 accelerator: Any) -> dict[str, float]:
        """Task contract: one pass over the eval split; accuracy, macro F1, AUROC, eval loss."""
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


@hookimpl
def pefttool_register_tasks(register: Callable[[Task], None]) -> None:
    """Hook `pefttool_register_tasks` (once, at start-up): registers `classification`."""
    register(ClassificationTask())
