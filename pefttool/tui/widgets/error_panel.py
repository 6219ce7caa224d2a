"""A panel for a run that ended badly: what happened, and the tail of its stderr."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static


class ErrorPanel(VerticalScroll):
    """Hidden until `show_error`; styled (and coloured) by app.tcss."""

    def compose(self) -> ComposeResult:
        yield Static("", id="error-summary")
        yield Static("", id="error-tail", markup=False)

    def show_error(self, summary: str, stderr_tail: str) -> None:
        self.query_one("#error-summary", Static).update(summary)
        self.query_one("#error-tail", Static).update(stderr_tail or "(stderr is empty)")
        self.display = True
