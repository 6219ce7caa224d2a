"""The plan of the recipe being adjusted: what `pefttool plan` prints, for the edits on screen.

Parameters, the memory breakdown of full / LoRA / QLoRA side by side (CPU, and a GPU of the size
typed in the box), steps and tokens per epoch from the data, and, on `c`, a time estimate from a
few real steps (`--calibrate`: a child run into a temporary folder, deleted). Computed in a
worker; the recipe on disk is never touched (a calibration runs a copy in a temporary folder).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Header, Input, Label, Static

from ..widgets.footer import AppFooter
from .base import AppScreen


def plan_text(data: dict[str, Any], source: str, base_dir: Path, gpu_gib: float | None = None,
              calibrate_steps: int = 0) -> str:
    """`pefttool plan` (with `--gpu-gib`, and `--calibrate` when `calibrate_steps`) for recipe
    `data` as edited; raises a PefttoolError with the one line the CLI would print."""
    from ...plan import calibrate, data_estimate, estimate, render
    from ...recipe import validate_recipe
    from ..recipe_edit import absolutize_paths, recipe_text

    recipe = validate_recipe(data, source=source, base_dir=base_dir)
    estimated = data_estimate(recipe)
    plan = estimate(recipe, device=gpu_gib if gpu_gib else "cpu", data=estimated)
    if calibrate_steps:
        with tempfile.TemporaryDirectory(prefix="pefttool-plan-") as folder:
            path = Path(folder) / "recipe.toml"   # the edits, runnable from elsewhere
            path.write_text(recipe_text(absolutize_paths(data, base_dir, Path(folder)), None, source),
                            encoding="utf-8")
            plan.calibration = calibrate(path, [], recipe, steps=calibrate_steps,
                                         total_steps=estimated.total_steps)
    return render(plan)


@dataclass
class PlanReady(Message):
    text: str | None = None
    error: str | None = None


class PlanScreen(AppScreen):
    """The plan of the edited recipe; a GPU size to fit it in; `c` times a few real steps."""

    BINDINGS = [Binding("escape", "back", "Back"),
                Binding("c", "calibrate", "Time it", tooltip="a few real steps in a child run: the ETA")]
    CALIBRATE_STEPS = 5

    def __init__(self, data: dict[str, Any], source: str, base_dir: Path, name: str) -> None:
        super().__init__()
        self.data = copy.deepcopy(data)
        self.source, self.base_dir, self.recipe_name = source, base_dir, name
        self.gpu_gib: float | None = 24.0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="plan-gpu"):
            yield Label("GPU GiB (empty: CPU only) ", classes="field-label")
            yield Input(str(int(self.gpu_gib or 0)) if self.gpu_gib else "", compact=True, id="plan-gpu-gib",
                        placeholder="e.g. 24")
        with VerticalScroll(id="plan-box"):
            yield Static(f"estimating {self.recipe_name}: reading the data, counting the model…",
                         id="plan", markup=False)
        yield AppFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Plan of {self.recipe_name} (as edited)"
        self.query_one("#plan-box").border_title = "pefttool plan · enter: another GPU size · c: time it"
        self.estimate()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        try:
            size = float(text) if text else None
        except ValueError:
            size = -1.0
        if size is not None and not 0 < size < 1e6:
            self.query_one("#plan", Static).update(Text(f"✗ GPU GiB: '{text}' is not a size in GiB "
                                                        f"(e.g. 24); empty for the CPU only", style="bold red"))
            return
        self.gpu_gib = size
        self.estimate()

    def action_calibrate(self) -> None:
        self.query_one("#plan", Static).update(
            f"timing {self.CALIBRATE_STEPS} real steps of {self.recipe_name} in a child run "
            f"(loading the model first: this takes a while)…")
        self.estimate(self.CALIBRATE_STEPS)

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan", name="estimating the plan")
    def estimate(self, calibrate_steps: int = 0) -> None:
        from ...errors import PefttoolError

        try:
            text = plan_text(self.data, self.source, self.base_dir, self.gpu_gib, calibrate_steps)
            self.post_message(PlanReady(text=text))
        except PefttoolError as exc:
            self.post_message(PlanReady(error=str(exc)))
        except Exception as exc:   # shown, never a crash
            self.post_message(PlanReady(error=f"{type(exc).__name__}: {exc}"))

    def on_plan_ready(self, message: PlanReady) -> None:
        shown = self.query_one("#plan", Static)
        if message.error is not None:
            shown.update(Text(f"✗ {message.error}", style="bold red"))
        else:
            shown.update(message.text or "")

    def action_back(self) -> None:
        self.app.pop_screen()
