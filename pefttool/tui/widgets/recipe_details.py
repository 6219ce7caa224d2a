"""What a recipe will do, at a glance: model, task, data, strategy, key hyperparameters,
and whether it validates (every problem, with its key path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ...catalog import RecipeEntry
from ...errors import PefttoolError
from ...recipe import DEFAULT_STRATEGY
from ...tasks import registered
from .. import formatting as fmt
from ..formatting import display_path


def _join(parts: list[str]) -> str:
    return " · ".join(p for p in parts if p)


def summary_rows(entry: RecipeEntry) -> list[tuple[str, str]]:
    """(label, text) rows describing the recipe; missing values are shown as defaults would be."""
    get = entry.get
    model = _join([str(get("model.path", "?")), str(get("model.dtype", "float32")),
                   "gguf " + str(get("model.gguf_file")) if get("model.gguf_file") else ""])
    task_type = str(get("task.type", "?"))
    labels = get("task.labels", None)
    task = task_type + (f": {', '.join(map(str, labels))}" if labels else "")
    known = _registered_task(task_type)
    if known is not None and known.formats:
        task += f" ({get('task.format', known.formats[0])})"
    eval_part = (f"eval {get('data.eval')}" if get("data.eval", None)
                 else f"eval {float(get('data.eval_fraction', 0.2)):.0%} held out")
    rows = get("data.max_train_rows", None)
    train = get("data.train", "?")
    if isinstance(train, list):   # several sources: their names and weights
        train = " + ".join(f"{Path(str(s.get('path', '?'))).name}×{s.get('weight', 1)}" if isinstance(s, dict)
                           else "?" for s in train)
    data = _join([str(train), eval_part,
                  f"max_length {get('data.max_length', 128)}",
                  f"≤{rows} rows" if rows else ""])
    method: dict[str, Any] = get("method", {}) or {}
    options = " ".join(f"{k}={v}" for k, v in method.items() if k != "strategy")
    strategy = _join([str(method.get("strategy", DEFAULT_STRATEGY)), options])
    train = _join([
        fmt.plural(get("train.epochs", 3), "epoch"),
        f"max {get('train.max_steps')} steps" if get("train.max_steps", 0) else "",
        f"batch {get('train.batch_size', 16)}×{get('train.grad_accum', 1)}",
        f"lr {get('train.lr', 5e-5)}",
        f"{get('train.scheduler', 'linear')} warmup {get('train.warmup_ratio', 0.0)}",
        f"precision {get('train.mixed_precision', 'no')}",
    ])
    stopping = get("early_stopping.enabled", True)
    evaluation = _join([str(get("eval.metric", "") or "default metric"),
                        f"early stop patience {get('early_stopping.patience', 2)}" if stopping
                        else "no early stopping"])
    return [("model", model), ("task", task), ("data", data), ("strategy", strategy),
            ("train", train), ("eval", evaluation),
            ("output", str(get("output.dir", "runs/{name}")))]


class RecipeDetails(Static):
    """The highlighted recipe's summary and validation result."""

    COMPONENT_CLASSES = {"recipe-details--title", "recipe-details--label",
                         "recipe-details--ok", "recipe-details--problem"}

    def __init__(self, cwd: Path, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.cwd = cwd
        self.entry: RecipeEntry | None = None

    def show_entry(self, entry: RecipeEntry | None) -> None:
        self.entry = entry
        self.update(self._render_entry())

    def on_mount(self) -> None:
        self.update(self._render_entry())

    def _style(self, name: str) -> Any:
        return self.get_component_rich_style(f"recipe-details--{name}", partial=True)

    def _render_entry(self) -> Any:
        entry = self.entry
        if entry is None:
            return Text("No recipe selected.")
        where = f"built-in {entry.path.name}" if entry.origin == "built-in" \
            else display_path(entry.path, self.cwd)
        title = Text(entry.name, style=self._style("title"))
        title.append(f"  ({where})")
        parts: list[Any] = [title]
        if entry.get("description"):
            parts.append(Text(str(entry.get("description"))))
        # What is wrong comes first: a long summary never pushes it out of sight.
        if entry.problems:
            parts.append(Text(f"✗ {len(entry.problems)} problem(s):", style=self._style("problem")))
            parts += [Text(f"  - {p}") for p in entry.problems]
        else:
            parts.append(Text("✓ validates", style=self._style("ok")))
        if not entry.readable:    # nothing was read: no values to show, defaults would be invented
            parts.append(Text("\nFix the file in an editor; then F5 reads it again."))
            return Group(*parts)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style=self._style("label"), no_wrap=True)
        grid.add_column(overflow="fold")
        for label, text in summary_rows(entry):
            grid.add_row(label, text)
        parts += [Text(""), grid]
        return Group(*parts)


def _registered_task(task_type: str) -> Any:
    """The registered task of that type; None when there is none or the plugins fail to load
    (the Plugins screen shows why)."""
    try:
        return registered().get(task_type)
    except PefttoolError:
        return None
