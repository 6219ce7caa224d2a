"""The footer every screen shows: compact (less padding) in a narrow terminal, so its keys fit."""

from __future__ import annotations

from textual import events
from textual.widgets import Footer

# Below this width the footer drops its padding and the palette hint (ctrl+p still opens it,
# and every footer key is also a palette command).
COMPACT_BELOW = 100
PALETTE_HINT_FROM = 72


class AppFooter(Footer):
    def on_resize(self, event: events.Resize) -> None:
        self.compact = event.size.width < COMPACT_BELOW
        self.show_command_palette = event.size.width >= PALETTE_HINT_FROM
