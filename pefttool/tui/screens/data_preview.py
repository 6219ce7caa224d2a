"""Data preview: a recipe's cleaned rows as the model will see them (`pefttool inspect`).

The rendered text with the tokens that carry loss marked, the token ids, the length
distribution and what truncation touches. Read in a worker (tokenizer only, no weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Header, Static

from ..widgets.footer import AppFooter
from .base import AppScreen

ROWS = 3


def preview_text(recipe_path: Path, rows: int = ROWS) -> str:
    """`pefttool inspect RECIPE --rows N` as printed on a colour terminal (ANSI), or raises
    a PefttoolError with the one line the CLI would print."""
    from ...inspection import format_text, inspect_recipe
    from ...recipe import load_recipe

    return format_text(inspect_recipe(load_recipe(recipe_path), rows=rows), color=True)


@dataclass
class PreviewReady(Message):
    text: str | None = None
    error: str | None = None


class DataPreviewScreen(AppScreen):
    """What `pefttool inspect` shows, for the highlighted recipe; Esc goes back."""

    BINDINGS = [Binding("escape", "back", "Back")]

    def __init__(self, recipe_path: Path, name: str) -> None:
        super().__init__()
        self.recipe_path = Path(recipe_path)
        self.recipe_name = name

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="preview-box"):
            yield Static(f"reading and tokenizing the data of {self.recipe_name}…",
                         id="preview", markup=False)
        yield AppFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Data of {self.recipe_name}"
        box = self.query_one("#preview-box")
        box.border_title = "the rows as the model sees them · [[loss tokens]] (tab: scroll)"
        box.focus()
        self.load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="preview",
          name="reading the data")
    def load(self) -> None:
        from ...errors import PefttoolError

        try:
            self.post_message(PreviewReady(text=preview_text(self.recipe_path)))
        except PefttoolError as exc:
            self.post_message(PreviewReady(error=str(exc)))
        except Exception as exc:   # shown, never a crash
            self.post_message(PreviewReady(error=f"{type(exc).__name__}: {exc}"))

    def on_preview_ready(self, message: PreviewReady) -> None:
        shown = self.query_one("#preview", Static)
        if message.error is not None:
            shown.update(Text(f"✗ {message.error}", style="bold red"))
        else:
            shown.update(Text.from_ansi(message.text or ""))

    def action_back(self) -> None:
        self.app.pop_screen()
