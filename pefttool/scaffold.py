"""`pefttool new-plugin NAME [--task]`: a plugin distribution that passes its own test out of
the box.

It writes `pefttool-NAME/` with a pyproject (the `pefttool` entry point) and either a strategy
with an options model (BitFit: train only biases, and the task head) tested by
`pefttool.testing.check_strategy`, or, with `--task`, a task (one label per text with an
abstain threshold: its own options, metric table, evaluation pass and predictions) tested by
`pefttool.testing.check_task`. Nothing existing is overwritten.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import OutputError, PefttoolError

NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")

PYPROJECT = '''[project]
name = "pefttool-{dash}"
version = "0.1.0"
description = "A pefttool {kind} plugin: {name}"
requires-python = ">=3.11"
dependencies = ["pefttool"]

[project.entry-points.pefttool]
{name} = "pefttool_{name}"

[project.optional-dependencies]
test = ["pytest"]

[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[tool.setuptools]
packages = ["pefttool_{name}"]
'''

MODULE = '''"""Strategy `{name}`: BitFit (train only the biases, and the task head). Change `wrap` to
your method; see docs/plugins.md in pefttool for the whole strategy contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import Field

from pefttool import Strategy, StrategyOptions, hookimpl

if TYPE_CHECKING:  # only for the annotations: importing the plugin must stay light (no torch)
    import torch

    from pefttool import Recipe

HEADS = ("classifier", "score")


class {cls}Options(StrategyOptions):
    """The recipe's `[method]` keys for `{name}` (each description shows in `pefttool plugins`)."""

    train_head: bool = Field(True, description="also train the task head in full")


class {cls}Strategy(Strategy):
    """BitFit: `wrap` leaves only the biases (and the head) trainable; `save` is the default
    (the full model)."""

    name = "{name}"
    description = "BitFit: only biases (and the head) train"
    Options = {cls}Options

    def wrap(self, model: torch.nn.Module, recipe: Recipe, options: {cls}Options) -> torch.nn.Module:
        """Strategy contract, called once after loading: returns the model to train."""
        for param_name, param in model.named_parameters():
            head = options.train_head and param_name.startswith(HEADS)
            param.requires_grad = param_name.endswith(".bias") or head
        return model


@hookimpl
def pefttool_register_strategies(register: Callable[[Strategy], None]) -> None:
    """Hook `pefttool_register_strategies` (once, at start-up): registers `{name}`."""
    register({cls}Strategy())
'''

TEST = '''from pefttool.testing import check_strategy


def test_{name}_trains_saves_and_reloads(tmp_path):
    check_strategy("{name}", tmp_path, options={{"train_head": True}}, lr=1e-2)
'''


TASK_MODULE = '''"""Task `{name}`: one label per text, and an answer only when the model is sure enough.

`pefttool predict` answers `task.abstain` ("unsure") when the likeliest label's probability is
below `task.min_confidence`; evaluation reports accuracy, the share of rows it would answer
(coverage) and the accuracy on those. Change the metric table, `evaluate` and `predictions` to
your task; see docs/plugins.md in pefttool ("Writing a task plugin") for the whole contract.

    [task]
    type = "{name}"
    min_confidence = 0.8
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from pefttool.data.formats import LabelledRows, RowFormat
from pefttool.hookspecs import hookimpl
from pefttool.tasks import Metric, Prediction, Task, TaskOptions


class {cls}Options(TaskOptions):
    """The recipe's `[task]` keys beyond `type` (each description shows in `pefttool plugins`)."""

    min_confidence: float = Field(0.5, ge=0.0, le=1.0,
                                  description="answer only above this top-label probability")
    abstain: str = Field("unsure", min_length=1, description="the answer below min_confidence")


@dataclass
class {cls}Outputs:
    """What one evaluation pass gathers (over all processes)."""

    preds: list[int]
    labels: list[int]
    confidence: list[float]
    threshold: float
    loss: float


def accuracy(o: {cls}Outputs) -> float | None:
    """Share of rows whose likeliest label is right."""
    return sum(p == t for p, t in zip(o.preds, o.labels, strict=True)) / len(o.labels) if o.labels else None


def coverage(o: {cls}Outputs) -> float | None:
    """Share of rows answered (top probability at or above min_confidence)."""
    return sum(c >= o.threshold for c in o.confidence) / len(o.confidence) if o.confidence else None


def answered_accuracy(o: {cls}Outputs) -> float | None:
    """Accuracy over the answered rows only; None when none is answered."""
    hits = [p == t for p, t, c in zip(o.preds, o.labels, o.confidence, strict=True) if c >= o.threshold]
    return sum(hits) / len(hits) if hits else None


class {cls}Task(Task):
    """A classifier head over the texts (the model's own cross-entropy is the loss)."""

    Options = {cls}Options
    type = "{name}"
    description = "one label per text, abstaining below a confidence threshold"
    model_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    model_noun = "a classifier"
    has_labels = True
    sequence_labels = False
    default_metric = "accuracy"
    data_keys = ("model.path", "data.train", "data.eval", "data.text_column", "data.label_column")
    prompt_noun = "a text to label"
    metrics = {{
        "accuracy": Metric("accuracy", accuracy, higher_is_better=True, share_of_rows=True,
                           description="share of rows labelled right"),
        "coverage": Metric("coverage", coverage, higher_is_better=True, share_of_rows=True,
                           description="share of rows answered (not abstained)"),
        "answered_accuracy": Metric("answered_accuracy", answered_accuracy, higher_is_better=True,
                                    share_of_rows=True, description="accuracy on the answered rows"),
        "eval_loss": Metric("eval_loss", lambda o: o.loss, higher_is_better=False, selectable=False,
                            description="mean cross-entropy per batch"),
    }}

    def row_format(self, recipe: Any) -> RowFormat:
        """Task contract: a text and a label per row (data.text_column, data.label_column)."""
        return LabelledRows.from_recipe(recipe)

    def example_labels(self, input_ids: Any) -> Any:
        """Task contract (`pefttool plan`): one label id per row."""
        import torch

        return torch.zeros(input_ids.shape[:1], dtype=torch.long, device=input_ids.device)

    def evaluate(self, model: Any, eval_dl: Any, data: Any, recipe: Any, tokenizer: Any,
                 accelerator: Any) -> dict[str, float]:
        """Task contract: one pass over the held-out rows, gathered over all processes."""
        import torch

        preds: list[int] = []
        labels: list[int] = []
        confidence: list[float] = []
        sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        for batch in eval_dl:
            out = model(**batch)
            sums[0] += out.loss.double()
            sums[1] += 1
            top = out.logits.float().softmax(-1).max(-1)
            p, t, c = accelerator.gather_for_metrics((top.indices, batch["labels"], top.values))
            preds += p.tolist()
            labels += t.tolist()
            confidence += c.tolist()
        sums = accelerator.reduce(sums, reduction="sum")
        return self.score({cls}Outputs(preds, labels, confidence, recipe.task_options.min_confidence,
                                       float(sums[0] / sums[1].clamp(min=1))))

    def predictions(self, logits: Any, labels: list[str], recipe: Any) -> list[Prediction]:
        """Task contract (`pefttool predict`): the likeliest label, or the abstain answer."""
        import torch

        options = recipe.task_options
        out = []
        for row in torch.softmax(logits.float(), dim=-1).tolist():
            names = labels if len(labels) == len(row) else [str(i) for i in range(len(row))]
            best = max(range(len(row)), key=row.__getitem__)
            answer = names[best] if row[best] >= options.min_confidence else options.abstain
            out.append(Prediction(answer, {{n: round(p, 6) for n, p in zip(names, row, strict=True)}}))
        return out


@hookimpl
def pefttool_register_tasks(register: Callable[[Task], None]) -> None:
    """Hook `pefttool_register_tasks` (once, at start-up): registers `{name}`."""
    register({cls}Task())
'''

TASK_TEST = '''from pefttool.testing import check_task, write_rows


def test_{name}_trains_evaluates_answers_and_exports(tmp_path):
    result = check_task("{name}", tmp_path, data=write_rows(tmp_path / "rows.csv", n=64),
                        task={{"min_confidence": 0.6}})
    assert 0.0 <= result.best_metrics["coverage"] <= 1.0
'''


def new_plugin(name: str, parent: Path, task: bool = False) -> Path:
    """Write the plugin project `parent/pefttool-NAME` (a strategy, or with `task` a task);
    return its folder."""
    if not NAME.match(name):
        raise PefttoolError(f"new-plugin: '{name}' is not a usable plugin name; use lower-case "
                            f"letters, digits and '_', starting with a letter (e.g. bitfit)")
    root = Path(parent) / f"pefttool-{name.replace('_', '-')}"
    if root.exists():
        raise OutputError(f"new-plugin: {root} already exists; choose another name or folder")
    cls = "".join(part.capitalize() for part in name.split("_"))
    files = {
        "pyproject.toml": PYPROJECT.format(name=name, dash=name.replace("_", "-"),
                                           kind="task" if task else "strategy"),
        f"pefttool_{name}/__init__.py": (TASK_MODULE if task else MODULE).format(name=name, cls=cls),
        f"tests/test_{name}.py": (TASK_TEST if task else TEST).format(name=name),
        "README.md": f"# pefttool-{name}\n\n`pip install -e .[test] && pytest`\n",
    }
    try:
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"new-plugin: cannot write {root} ({exc.strerror})") from exc
    return root
