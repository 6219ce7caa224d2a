"""The run's log: its LogEvents (coloured by level from app.tcss) and the stderr tail."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from ...events import CheckpointEvent, EndEvent, Event, LogEvent, StartEvent


class LogPane(RichLog):
    """Log events, checkpoints and the run's end, in the order they happened; stderr lines."""

    COMPONENT_CLASSES = {"log-pane--info", "log-pane--warning", "log-pane--error",
                         "log-pane--note", "log-pane--stderr"}

    def __init__(self, *, id: str | None = None) -> None:
        # min_width: RichLog renders at least 78 columns wide by default, so in a narrower pane
        # wrapped lines ran past its edge (under the scrollbar) and lost their ends.
        super().__init__(id=id, wrap=True, markup=False, highlight=False, max_lines=2000,
                         min_width=20)

    def show_events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, LogEvent):
                self.add_line(event.message, event.level)
            elif isinstance(event, StartEvent) and event.resumed_from_step:
                self.add_line(f"resumed from the checkpoint at step {event.resumed_from_step} "
                              f"(pid {event.pid})", "note")
            elif isinstance(event, CheckpointEvent):
                self.add_line(f"checkpoint at step {event.step} ({event.reason})", "note")
            elif isinstance(event, EndEvent):
                text = f"run {event.status.replace('_', ' ')} at step {event.step}"
                self.add_line(text + (f": {event.message}" if event.message else ""),
                              "error" if event.status == "failed" else "note")

    def add_line(self, message: str, level: str = "note") -> None:
        style = self.get_component_rich_style(f"log-pane--{level}", partial=True) \
            if f"log-pane--{level}" in self.COMPONENT_CLASSES else None
        text = Text(f"{level:<7} ", style=style or "")
        text.append(message)
        self.write(text)
