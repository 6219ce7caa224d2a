"""The base of the app's screens: a failed worker opens an error modal instead of vanishing."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen
from textual.worker import Worker, WorkerState

if TYPE_CHECKING:   # annotations only: app.py imports the screens
    from ..app import PefttoolApp


class AppScreen(Screen):
    """Worker state messages do not bubble, so each screen passes its workers' errors on."""

    @property
    def pefttool_app(self) -> PefttoolApp:
        """`self.app`, typed as the app these screens run in (Textual types it `App[Any]`), so
        calls to the app's own methods (show_error, launch, ...) are checked."""
        return cast("PefttoolApp", self.app)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.pefttool_app.show_error(f"Failed while {event.worker.name or 'working in the background'}",
                                         f"{type(error).__name__}: {error}")
