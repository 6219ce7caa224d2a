"""Plugins: what is installed, its version, the strategies and tasks it adds, and load errors."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Header, Static

from ...errors import PefttoolError
from ..messages import PluginsLoaded
from ..widgets.footer import AppFooter
from .base import AppScreen


def describe_strategies(host: Any) -> dict[str, dict[str, Any]]:
    """"strategy NAME" / "task NAME" → description, owning plugin, the recipe section its
    options go in, and each option with its default and meaning."""
    out = {}
    for noun, section, registry in (("strategy", "method", host.strategies), ("task", "task", host.tasks)):
        for name, offer in registry.items():
            options = []
            for field_name, info in offer.Options.model_fields.items():
                default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
                options.append((field_name, default, info.description or ""))
            out[f"{noun} {name}"] = {"description": offer.description, "plugin": offer.plugin,
                                     "section": section, "options": options}
    return out


class PluginsScreen(AppScreen):
    """Installed plugins; a plugin that fails to load is shown here, not as a crash."""

    BINDINGS = [Binding("f5", "reload", "Reload")]

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="plugins-body"):
            yield Static("", id="plugins-error", markup=False)
            yield DataTable(id="plugins-table", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="strategy-details-box"):
                yield Static("", id="strategy-details")
        yield AppFooter()

    def on_mount(self) -> None:
        self.sub_title = "Plugins"
        self.rows: list[dict[str, Any]] = []
        self.strategies: dict[str, dict[str, Any]] = {}
        self.query_one("#plugins-error").display = False
        table = self.query_one(DataTable)
        table.add_columns("plugin", "version", "distribution", "adds", "hooks")
        self.load_plugins(refresh=False)

    @work(thread=True, exclusive=True, exit_on_error=False, group="plugins",
          name="loading the plugins")
    def load_plugins(self, refresh: bool) -> None:
        from ...plugins import get_plugin_host

        try:
            host = get_plugin_host(refresh=refresh)
        except PefttoolError as exc:
            self.post_message(PluginsLoaded([], {}, error=str(exc)))
            return
        self.post_message(PluginsLoaded(host.describe(), describe_strategies(host)))

    def on_plugins_loaded(self, message: PluginsLoaded) -> None:
        self.rows, self.strategies = message.rows, message.strategies
        error = self.query_one("#plugins-error", Static)
        error.display = message.error is not None
        if message.error:
            error.update(f"Plugins failed to load:\n{message.error}")
        table = self.query_one(DataTable)
        table.clear()
        for row in self.rows:
            hooks = [h.removeprefix("pefttool_") for h in row.get("hooks", [])]
            adds = row.get("strategies", []) + [f"task {t}" for t in row.get("tasks", [])]
            table.add_row(row["name"], row.get("version") or "-", row.get("distribution") or "-",
                          ", ".join(adds) or "-", ", ".join(hooks) or "-")
        self._show_details()

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._show_details()

    def _show_details(self) -> None:
        table = self.query_one(DataTable)
        details = self.query_one("#strategy-details", Static)
        if not self.rows:
            details.update("No plugins loaded.")
            return
        row = self.rows[min(table.cursor_row, len(self.rows) - 1)]
        parts: list[Any] = [Text(f"{row['name']} ({row.get('module', '')})", style="bold")]
        offers = [f"strategy {n}" for n in row.get("strategies", [])] + \
            [f"task {n}" for n in row.get("tasks", [])]
        for offer in offers:
            info = self.strategies.get(offer, {})
            parts.append(Text(f"\n{offer}: {info.get('description', '')}"))
            grid = Table.grid(padding=(0, 2))
            grid.add_column(no_wrap=True)
            grid.add_column(no_wrap=True)
            grid.add_column(overflow="fold")
            for option, default, help_text in info.get("options", []):
                grid.add_row(f"  {info.get('section', 'method')}.{option}", default, help_text)
            if not info.get("options"):
                grid.add_row("  (no options of its own)", "", "")
            parts.append(grid)
        if not offers:
            parts.append(Text("\nadds no strategy or task (observer hooks only)"))
        details.update(Group(*parts))

    def action_reload(self) -> None:
        self.load_plugins(refresh=True)
