"""The base of the app's screens: a failed worker opens an error modal instead of vanishing."""

from __future__ import annotations

from textual.screen import Screen
from textual.worker import Worker, WorkerState


class AppScreen(Screen):
    """Worker state messages do not bubble, so each screen passes its workers' errors on."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.app.show_error(f"Failed while {event.worker.name or 'working in the background'}",
                                f"{type(error).__name__}: {error}")
