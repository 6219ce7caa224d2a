"""Modal dialogs: an error, a yes/no question, quitting with a live run, saving a file."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ErrorModal(ModalScreen[None]):
    """An error the user can read and dismiss; the app carries on."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close")]

    def __init__(self, title: str, detail: str) -> None:
        super().__init__()
        self.title_text = title
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="error"):
            yield Label(self.title_text, id="dialog-title")
            with VerticalScroll(id="dialog-body"):
                yield Static(self.detail, markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button("Close", id="close", variant="primary")

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.dismiss(None)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)


class ConfirmModal(ModalScreen[bool]):
    """A yes/no question; `y` answers yes, `n` or escape answers no."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No",
                 yes_variant: str = "error") -> None:
        super().__init__()
        self.question = question
        self.yes, self.no = yes, no
        self.yes_variant = yes_variant

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="dialog-title", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant=self.yes_variant)  # type: ignore[arg-type]
                yield Button(f"{self.no} (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class QuitModal(ModalScreen[str | None]):
    """Quitting while a run is going: stop it (it checkpoints first), or leave it running."""

    BINDINGS = [Binding("s", "choose('stop')", "Stop and quit"),
                Binding("l", "choose('leave')", "Leave running"),
                Binding("escape", "choose(None)", "Cancel")]

    def __init__(self, runs: list[str]) -> None:
        super().__init__()
        self.runs = runs

    def compose(self) -> ComposeResult:
        names = ", ".join(self.runs)
        with Vertical(id="dialog"):
            yield Static(f"Training is still going: {names}.\n\nStop it (it checkpoints, then "
                         f"stops), or leave it running detached? Either way you can come back "
                         f"to it from the Runs screen.", id="dialog-title")
            with Horizontal(id="dialog-buttons"):
                yield Button("Stop (s)", id="stop", variant="error")
                yield Button("Leave running (l)", id="leave", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#leave", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)

    def action_choose(self, choice: str | None) -> None:
        self.dismiss(choice)


class SaveAsModal(ModalScreen[Path | None]):
    """Ask where to save a new recipe file; an existing file is refused, never replaced."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, suggestion: Path, base: Path) -> None:
        super().__init__()
        self.suggestion = suggestion
        self.base = base

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Save the adjusted recipe as a new file", id="dialog-title")
            yield Input(str(self.suggestion), id="save-path")
            yield Static("", id="save-problem", classes="problem")
            with Horizontal(id="dialog-buttons"):
                yield Button("Save (enter)", id="save", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def _target(self) -> Path:
        text = self.query_one("#save-path", Input).value.strip()
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = self.base / path
        if path.suffix != ".toml":
            path = path.with_name(path.name + ".toml")
        return path

    @on(Input.Submitted)
    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        path = self._target()
        if path.exists():
            self.query_one("#save-problem", Static).update(
                f"{path.name} already exists; pick another name (files are never overwritten)")
            return
        self.dismiss(path)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
