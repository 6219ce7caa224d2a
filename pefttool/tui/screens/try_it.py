"""Try it: type a text, see what a finished run's model makes of it.

A classification run answers with its label and every class's probability
(`pefttool.trained.predict`); a causal-LM run answers with a reply, streamed as it is produced
(`pefttool.generate.generate`). The model loads in a worker thread and every answer is computed
in one, so the UI never freezes (loading a model takes seconds; torch itself is imported there).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Header, Input, RichLog, Static

from ...tasks import get_task
from .. import formatting as fmt
from ..widgets.footer import AppFooter
from .base import AppScreen

MAX_NEW_TOKENS = 128
BAR_WIDTH = 20


def load_model(run_dir: Path) -> Any:
    """The run's model (pefttool.trained.load_trained); a seam the tests replace."""
    from ...trained import load_trained

    return load_trained(run_dir)


def classify(loaded: Any, text: str) -> tuple[str, dict[str, float]]:
    from ...trained import predict

    return predict(loaded, [text])[0]


def reply(loaded: Any, text: str, on_text: Any, stop: threading.Event) -> str:
    """The causal LM's reply (rendered as the run's training rendered prompts), streamed piece
    by piece to `on_text`; `stop` ends it after the current token."""
    from ...generate import generate, typed_prompt

    # typed as `pefttool generate --prompt` takes it: a one-column prompt_template filled with it
    return generate(loaded, typed_prompt(loaded.recipe, text), on_text=on_text, stop=stop,
                    max_new_tokens=MAX_NEW_TOKENS, greedy=True)


@dataclass
class ModelLoaded(Message):
    """The worker loaded the model (`loaded`), or says why it could not (`error`)."""

    loaded: Any = None
    error: str | None = None


@dataclass
class Answered(Message):
    """An answer to `text`: a label and probabilities, or a finished reply, or an error."""

    text: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    reply: str | None = None
    error: str | None = None


@dataclass
class ReplyPiece(Message):
    piece: str


class TryScreen(AppScreen):
    """Type a text, Enter: the run's model answers."""

    BINDINGS = [Binding("escape", "back", "Back"), Binding("ctrl+l", "clear", "Clear")]

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.loaded: Any = None
        self.busy = False
        self._stop = threading.Event()
        self._reply = ""
        self._submitted = False   # Enter pressed before the model was in
        self._load_failed = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="try-status", markup=False)
        yield Input(placeholder="loading the model…", id="try-input")
        yield RichLog(id="try-output", wrap=True, markup=False, highlight=False, min_width=20)
        yield AppFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Try {self.run_dir.name}"
        self.query_one("#try-output").border_title = "answers"
        self._load_began = time.monotonic()
        self._loading_line()
        self._ticker = self.set_interval(1.0, self._loading_line)   # loading may take minutes
        self.load()
        self.query_one(Input).focus()

    def _loading_line(self) -> None:
        if self.loaded is not None or self._load_failed:
            return
        waited = time.monotonic() - self._load_began
        held = " · answered when it is in" if self._submitted else " (type meanwhile)"
        self._status(f"loading the model… {fmt.duration(waited)}{held}")   # (the title names the run)

    def _status(self, text: str) -> None:
        self.query_one("#try-status", Static).update(text)

    # ------------------------------------------------------------------ workers

    @work(thread=True, exclusive=True, exit_on_error=False, group="try-load",
          name="loading the model")
    def load(self) -> None:
        from ...errors import PefttoolError

        try:
            loaded = load_model(self.run_dir)
        except PefttoolError as exc:
            self.post_message(ModelLoaded(error=str(exc)))
            return
        except Exception as exc:   # a model that does not load: said, never a crash
            self.post_message(ModelLoaded(error=f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(ModelLoaded(loaded=loaded))

    @work(thread=True, exclusive=True, exit_on_error=False, group="try-answer",
          name="answering")
    def answer(self, text: str) -> None:
        try:
            if get_task(self.task_type).inference_command == "predict":
                label, probs = classify(self.loaded, text)
                self.post_message(Answered(text, label=label, probabilities=probs))
            else:
                self._stop.clear()
                out = reply(self.loaded, text, lambda p: self.post_message(ReplyPiece(p)),
                            self._stop)
                self.post_message(Answered(text, reply=out))
        except Exception as exc:
            self.post_message(Answered(text, error=f"{type(exc).__name__}: {exc}"))

    @property
    def task_type(self) -> str:
        return str(self.loaded.recipe.task.type) if self.loaded is not None else ""

    # ------------------------------------------------------------------ messages

    def on_model_loaded(self, message: ModelLoaded) -> None:
        field = self.query_one(Input)
        self._ticker.stop()
        if message.error:
            self._load_failed = True
            self._status(f"✗ cannot load the model: {message.error}")
            field.placeholder = "(no model)"
            field.disabled = True
            return
        self.loaded = message.loaded
        kind = get_task(self.task_type).prompt_noun
        note = ""
        if get_task(self.task_type).inference_command == "generate":
            from ...generate import typed_prompt_note

            note = typed_prompt_note(self.loaded.recipe)
        self._status(f"✓ {self.run_dir.name} loaded ({self.task_type}): type {kind}, Enter"
                     + (f" ({note})" if note else ""))
        field.placeholder = f"type {kind}, then Enter"
        pending = field.value.strip()
        if pending and self._submitted:
            self._ask(pending)

    @on(Input.Submitted, "#try-input")
    def _submitted_text(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.loaded is None:
            self._submitted = True   # answered as soon as the model is in
            self._loading_line()
            return
        self._ask(text)

    def _ask(self, text: str) -> None:
        if self.busy:
            self.notify("still answering the previous text", severity="warning")
            return
        self._submitted = False
        self.busy = True
        self._reply = ""
        self.query_one(Input).value = ""
        log = self.query_one(RichLog)
        log.write(Text(f"> {text}", style="bold"))
        self._status("thinking…")
        self.answer(text)

    def on_reply_piece(self, message: ReplyPiece) -> None:
        self._reply += message.piece
        self._status(f"replying… {self._reply[-60:]}")

    def on_answered(self, message: Answered) -> None:
        self.busy = False
        log = self.query_one(RichLog)
        if message.error:
            log.write(Text(f"✗ {message.error}", style="red"))
        elif message.label is not None:
            probs = message.probabilities or {}
            share = f"  ({probs[message.label]:.1%})" if message.label in probs else ""
            log.write(Text(f"{message.label}{share}", style="bold green"))
            width = max((len(k) for k in probs), default=0)
            for name, p in sorted(probs.items(), key=lambda kv: -kv[1]):
                bar = "█" * round(p * BAR_WIDTH)
                log.write(Text(f"  {name:<{width}}  {p:6.1%}  {bar}"))
        else:
            log.write(Text(message.reply or "(an empty reply)"))
        log.write(Text(""))
        self._status(f"✓ {self.run_dir.name} ({self.task_type}): type another, Enter")

    # ------------------------------------------------------------------ actions

    def action_clear(self) -> None:
        self.query_one(RichLog).clear()

    def action_back(self) -> None:
        self._stop.set()   # a reply being generated ends after its current token
        self.dismiss()
