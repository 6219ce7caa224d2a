"""Task `regression`: one number per text, from a one-output head trained on mean squared error.

A third-party task plugin written only against pefttool's public contract (`pefttool.tasks`,
`pefttool.data.formats`, `pefttool.hookspecs`): it registers a `Task` through the
`pefttool_register_tasks` hook, reads its rows with its own `RowFormat` (a text and a number),
asks transformers for a regression head (`num_labels=1, problem_type="regression"`: the model's
own loss is then MSE), evaluates Pearson, Spearman and RMSE, and answers `pefttool predict` with
numbers. Works with every strategy that wraps a sequence classifier (full, lora, qlora).

    [task]
    type = "regression"
    decimals = 3          # how `pefttool predict` prints the numbers (default 4)

    [data]
    text_column = "text"  # the text
    label_column = "score"  # the number it should give (a CSV/JSONL cell: 3.5, "0.25", 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from pefttool.data.formats import BadRow, Row, RowFormat, cell_text
from pefttool.hookspecs import hookimpl
from pefttool.tasks import Metric, Prediction, Task, TaskOptions


@dataclass
class RegressionOutputs:
    """What one evaluation pass gathers (over all processes)."""

    predicted: list[float]
    target: list[float]
    loss: float


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson's correlation; None when either side is constant (undefined) or too short."""
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank (as Spearman's rho needs)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation: Pearson's over the ranks."""
    return pearson(ranks(x), ranks(y))


def rmse(x: list[float], y: list[float]) -> float | None:
    """Root mean squared error, in the numbers' own units; None on no rows."""
    if not x:
        return None
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(x, y)) / len(x))


class NumberRows(RowFormat):
    """A text and a number per row. A cell that is not a number is a bad row (counted and
    named, or an error under data.on_bad_rows = "error"), as a bad label is for classification."""

    sequence_labels = False
    target_noun = "number"

    @classmethod
    def from_recipe(cls, recipe: Any) -> RowFormat:
        """The two columns a row reads, named by their recipe keys for the missing-column error."""
        d = recipe.data
        return cls([("data.text_column", d.text_column), ("data.label_column", d.label_column)])

    def make_row(self, recipe: Any, values: dict[str, Any]) -> Row | None:
        """One cleaned row (its number kept as text in the label slot); BadRow names the reason."""
        d = recipe.data
        text = cell_text(values[d.text_column], d.text_column)
        value = values[d.label_column]
        if isinstance(value, bool) or value is None:
            raise BadRow("is not a number", d.label_column)
        try:
            number = float(str(value).strip())
        except ValueError:
            raise BadRow("is not a number", d.label_column) from None
        if not math.isfinite(number):
            raise BadRow("is not a finite number", d.label_column)
        return Row(text, text, repr(number)) if text else None

    def encode_columns(self, rows: list[Row], encoder: Any) -> dict[str, list]:
        """The rows as columns before tokenizing: the text and the float target."""
        return {"text": [r.text for r in rows], "label": [float(r.label_text()) for r in rows]}

    def tokenize(self, encoder: Any, batch: dict[str, list]) -> dict[str, list]:
        """Token ids and mask for the text; `labels` is the float the head should give."""
        enc = encoder.tok(batch["text"], truncation=True, max_length=encoder.max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": [float(v) for v in batch["label"]]}


class RegressionOptions(TaskOptions):
    decimals: int = Field(4, ge=0, le=12, description="decimals `pefttool predict` prints")


class RegressionTask(Task):
    Options = RegressionOptions
    type = "regression"
    description = "one number per text (a regression head, MSE): Pearson, Spearman, RMSE"
    model_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    model_noun = "a regression model"
    default_metric = "pearson"
    has_labels = False        # no label set: one number per row
    sequence_labels = False
    data_keys = ("model.path", "data.train", "data.eval", "data.text_column", "data.label_column")
    prompt_noun = "a text to score"
    metrics = {
        "pearson": Metric("pearson", lambda o: pearson(o.predicted, o.target), higher_is_better=True,
                          description="Pearson correlation of predicted and true numbers"),
        "spearman": Metric("spearman", lambda o: spearman(o.predicted, o.target),
                           higher_is_better=True, description="Spearman rank correlation"),
        "rmse": Metric("rmse", lambda o: rmse(o.predicted, o.target), higher_is_better=False,
                       description="root mean squared error, in the label's units"),
        "eval_loss": Metric("eval_loss", lambda o: o.loss, higher_is_better=False, selectable=False,
                            description="mean squared error per batch"),
    }

    def row_format(self, recipe: Any) -> RowFormat:
        """Every regression recipe reads NumberRows."""
        return NumberRows.from_recipe(recipe)

    def model_kwargs(self, recipe: Any) -> dict[str, Any]:
        """One output and transformers' MSE loss; a base with another head gets a new one."""
        return {"num_labels": 1, "problem_type": "regression", "ignore_mismatched_sizes": True}

    def example_labels(self, input_ids: Any) -> Any:
        """One float target per row (`pefttool plan` measures a step with them)."""
        import torch

        return torch.zeros(input_ids.shape[:1], dtype=torch.float32, device=input_ids.device)

    def check_recipe(self, recipe: Any) -> list[str]:
        """The base checks, and no label set: a number is not one of a set of labels."""
        problems = super().check_recipe(recipe)
        if recipe.task.labels is not None:
            problems.append("task.labels: a regression task predicts a number, not a label from "
                            "a set; remove task.labels")
        return problems

    def evaluate(self, model: Any, eval_dl: Any, data: Any, recipe: Any, tokenizer: Any,
                 accelerator: Any) -> dict[str, float]:
        """One pass over the held-out rows: the head's first output against the target, over
        all processes; the metric table scores what it gathered."""
        import torch

        predicted: list[float] = []
        target: list[float] = []
        sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        for batch in eval_dl:
            out = model(**batch)
            sums[0] += out.loss.double()
            sums[1] += 1
            p, t = accelerator.gather_for_metrics((out.logits.float()[:, 0], batch["labels"].float()))
            predicted += p.tolist()
            target += t.tolist()
        sums = accelerator.reduce(sums, reduction="sum")
        return self.score(RegressionOutputs(predicted, target, float(sums[0] / sums[1].clamp(min=1))))

    def predictions(self, logits: Any, labels: list[str], recipe: Any) -> list[Prediction]:
        """Each text's number, printed with task.decimals decimals; no per-label scores."""
        decimals = recipe.task_options.decimals
        return [Prediction(f"{value:.{decimals}f}", {}) for value in logits[:, 0].tolist()]

    def prediction_fields(self, prediction: Prediction) -> dict[str, Any]:
        """`pefttool predict --json` gives the number as a JSON number under "value"."""
        return {"value": float(prediction.answer)}


@hookimpl
def pefttool_register_tasks(register: Callable[[Task], None]) -> None:
    """pefttool's task hook: the one task this package adds."""
    register(RegressionTask())
