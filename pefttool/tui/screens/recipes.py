"""Recipes: built-in and local recipes; the highlighted one's summary and validation."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Header

from ...catalog import RecipeEntry, find_recipes
from ...recipe import DEFAULT_STRATEGY
from .. import formatting as fmt
from ..formatting import display_path
from ..messages import RecipesFound
from ..widgets.footer import AppFooter
from ..widgets.recipe_details import RecipeDetails
from .base import AppScreen


class RecipeTable(DataTable):
    """The recipe list; its Enter (select the row) is named in the footer as what it does."""

    BINDINGS = [Binding("enter", "select_cursor", "Adjust")]


class RecipesScreen(AppScreen):
    """Pick a recipe: Enter adjusts it, `l` launches it as it is."""

    BINDINGS = [
        Binding("enter", "adjust", "Adjust", show=False),
        Binding("l", "launch", "Launch"),
        Binding("p", "preview", "Data", tooltip="the rows as the model sees them (pefttool inspect)"),
        Binding("f5", "reload", "Reload", tooltip="read the recipe files again"),
    ]

    def __init__(self, cwd: Path) -> None:
        super().__init__()
        self.cwd = cwd
        self.entries: list[RecipeEntry] = []
        self.select_after: Path | None = None   # the recipe to highlight once the list is read

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="recipes-body"):
            yield RecipeTable(id="recipes-table", cursor_type="row", zebra_stripes=True)
            # Scrolls and takes focus (Tab), so a long summary never hides the recipe's problems.
            with VerticalScroll(id="recipe-details-box"):
                yield RecipeDetails(self.cwd, id="recipe-details")
        yield AppFooter()

    def on_mount(self) -> None:
        self.sub_title = "Recipes"
        self.query_one("#recipe-details-box").border_title = "details (tab: scroll)"
        table = self.query_one(DataTable)
        table.add_columns("ok", "recipe", "strategy", "from")
        table.loading = True
        self.load_recipes()

    @work(thread=True, exclusive=True, exit_on_error=False, group="recipes",
          name="reading the recipes")
    def load_recipes(self) -> None:
        self.post_message(RecipesFound(find_recipes(self.cwd)))

    def on_recipes_found(self, message: RecipesFound) -> None:
        self.entries = message.entries
        table = self.query_one(DataTable)
        table.loading = False
        table.clear()
        for i, entry in enumerate(self.entries):
            origin = "built-in" if entry.origin == "built-in" else display_path(entry.path.parent, self.cwd)
            strategy = str(entry.get("method.strategy", DEFAULT_STRATEGY)) if entry.readable else "?"
            table.add_row("✗" if entry.problems else "✓", entry.name, strategy, origin, key=str(i))
        keep = self.select_after
        self.select_after = None
        rows = [i for i, entry in enumerate(self.entries) if keep is not None and entry.path == keep]
        if rows:
            table.move_cursor(row=rows[0])   # a reload keeps the place (or shows the new file)
        self.query_one(RecipeDetails).show_entry(self.current)
        table.focus()
        self.refresh_bindings()   # the footer names the table's keys once it has focus

    @on(DataTable.RowHighlighted, "#recipes-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.query_one(RecipeDetails).show_entry(self.current)
        self.query_one("#recipe-details-box").scroll_home(animate=False)

    @on(DataTable.RowSelected, "#recipes-table")
    def _selected(self) -> None:
        self.action_adjust()

    @property
    def current(self) -> RecipeEntry | None:
        table = self.query_one(DataTable)
        if not self.entries or table.row_count == 0:
            return None
        return self.entries[min(table.cursor_row, len(self.entries) - 1)]

    def select_recipe(self, name: str) -> bool:
        """Move the cursor to the recipe called `name` (by name or file stem)."""
        for i, entry in enumerate(self.entries):
            if name in (entry.name, entry.path.stem, str(entry.path)):
                self.query_one(DataTable).move_cursor(row=i)
                return True
        return False

    def action_adjust(self) -> None:
        from .adjust import AdjustScreen

        entry = self.current
        if entry is not None and not entry.readable:   # no values to adjust: the error, first
            self.pefttool_app.show_error(f"{entry.name} cannot be read",
                                         f"{display_path(entry.path, self.cwd)}:\n" +
                                         "\n".join(f"- {p}" for p in entry.problems) +
                                         "\n\nFix the file in an editor, then F5 reads it again.")
        elif entry is not None:
            self.app.push_screen(AdjustScreen(entry, self.cwd), self._adjusted)

    def _adjusted(self, saved: Path | None) -> None:
        """Back from Adjust: the list is read again, on the recipe saved there if one was."""
        current = self.current
        self.select_after = saved or (current.path if current is not None else None)
        self.action_reload()

    def _valid_current(self, then: str) -> RecipeEntry | None:
        """The highlighted recipe if it validates; else its problems in a dialog, and None."""
        entry = self.current
        if entry is not None and entry.problems:
            self.pefttool_app.show_error(f"{entry.name} does not validate",
                                "\n".join(f"- {p}" for p in entry.problems) +
                                f"\n\nAdjust it (Enter) or fix the file, then {then}.")
            return None
        return entry

    def action_preview(self) -> None:
        from .data_preview import DataPreviewScreen

        entry = self._valid_current("preview its data")
        if entry is not None:
            self.app.push_screen(DataPreviewScreen(entry.path, entry.name))

    def action_launch(self) -> None:
        entry = self._valid_current("launch")
        if entry is None:
            return
        steps = entry.get("train.max_steps", 0)
        what = (f"{entry.name} as it is ({entry.get('method.strategy', DEFAULT_STRATEGY)}, "
                f"{f'max {steps} steps' if steps else fmt.plural(entry.get('train.epochs', 3), 'epoch')})")
        self.pefttool_app.confirm_launch(what, lambda: self.pefttool_app.launch(entry.path, [], entry.name))

    def action_reload(self) -> None:
        if self.select_after is None and self.current is not None:
            self.select_after = self.current.path
        self.query_one(DataTable).loading = True
        self.load_recipes()
