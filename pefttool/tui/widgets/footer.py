"""The footer every screen shows: compact (less padding) in a narrow terminal, so its keys fit."""

from __future__ import annotations

from textual import events
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

# Below this width the footer drops its padding and the palette hint (ctrl+p still opens it,
# and every footer key is also a palette command).
COMPACT_BELOW = 100
PALETTE_HINT_FROM = 72
PALETTE_HINT_WIDTH = 13
# When the keys still do not fit, these go first, in this order (F5 rereads a list that is
# reread on return anyway; Adjust's plan line says ctrl+o; Escape is Back on every screen;
# 1/2/3 switch screens), so a screen's own keys and "q Quit" stay whole.
DROP_FIRST = (("reload",), ("quick_trial",), ("plan",), ("back",),
              ("show('recipes')", "show('runs')", "show('plugins')"))


class AppFooter(Footer):
    def on_resize(self, event: events.Resize) -> None:
        self.compact = event.size.width < COMPACT_BELOW
        self.show_command_palette = event.size.width >= PALETTE_HINT_FROM
        if self._left_out() != getattr(self, "_dropped", ()):
            self.call_after_refresh(self.recompose)

    def _keys(self) -> list[tuple[str, int]]:
        """(action, width) of each key shown, as compact Footer lays them out."""
        keys: dict[str, int] = {}
        for _, binding, _, _ in self.screen.active_bindings.values():
            if binding.show and binding.action not in keys:
                keys[binding.action] = len(self.app.get_key_display(binding)) + 1 + len(binding.description) + 1
        return list(keys.items())

    def _left_out(self) -> tuple[str, ...]:
        width = self.size.width
        if not width or not self._bindings_ready:
            return ()
        if self.show_command_palette:
            width -= PALETTE_HINT_WIDTH   # "▏^p palette" at the right end
        keys = self._keys()
        need = sum(w for _, w in keys)
        dropped: list[str] = []
        for actions in DROP_FIRST:
            if need <= width:
                break
            for action, w in keys:
                if action in actions:
                    dropped.append(action)
                    need -= w
        return tuple(dropped)

    def compose(self):
        self._dropped = self._left_out()
        for widget in super().compose():
            if isinstance(widget, FooterKey) and widget.action in self._dropped:
                continue
            yield widget
