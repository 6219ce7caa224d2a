"""Adjust: edit a recipe's common values in a form, validated live; save as a new file; launch.

Every change is validated by `validate_recipe` (the schema `pefttool validate` uses) in a
worker; its problems appear under the field they name, and all of them in the side panel.
A valid recipe then gets `pefttool plan`'s estimate (trainable parameters, peak memory) in
the side panel, from the same worker: it follows batch, length and strategy as they change.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import DescendantFocus
from textual.widget import Widget
from textual.widgets import Header, Input, Label, Select, Static

from ...catalog import RecipeEntry
from ...errors import PefttoolError, RecipeError
from ...recipe import DEFAULT_STRATEGY
from ..messages import PlanEstimated, RecipeChecked
from ..recipe_edit import (
    QUICK_TRIAL,
    FieldSpec,
    absolutize_paths,
    common_fields,
    data_fields,
    format_value,
    free_path,
    get_dotted,
    overrides_between,
    parse_raw,
    parse_text,
    problems_for,
    recipe_text,
    set_dotted,
    strategy_fields,
    with_raw,
    write_new_file,
)
from ..widgets.footer import AppFooter
from .base import AppScreen


def widget_id(key: str) -> str:
    return "f-" + key.replace(".", "--")


def plan_line(data: dict[str, Any], source: str, base_dir: Path) -> str:
    """`pefttool plan`'s one-line estimate for a valid recipe's own strategy (no weights read),
    or one line saying why there is none."""
    from ...plan import estimate
    from ...recipe import validate_recipe

    try:
        recipe = validate_recipe(data, source=source, base_dir=base_dir)
        return ("plan: " + estimate(recipe, strategies=(recipe.method.strategy,)).summary()
                + " (ctrl+o: the whole plan)")
    except Exception as exc:  # an estimate is advice: it never stops editing
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"plan: no estimate ({text})"


def check(data: dict[str, Any], source: str, base_dir: Path) -> list[str]:
    """Every problem `pefttool validate` would report for this data ([] when valid)."""
    from ...data.columns import column_problems
    from ...recipe import validate_recipe

    try:
        # and the columns against the data files' headers, as `pefttool validate` checks them
        return column_problems(validate_recipe(data, source=source, base_dir=base_dir))
    except RecipeError as exc:
        return list(exc.problems)
    except PefttoolError as exc:   # a plugin that fails to load, say
        return [str(exc)]
    except Exception as exc:       # a bug in a plugin's options model: shown, never fatal
        return [f"validation itself failed: {type(exc).__name__}: {exc}"]


class FieldRow(Vertical):
    """A label, an input (or a select for a fixed set of values), and its problems."""

    def __init__(self, spec: FieldSpec, value: Any, choices: tuple[str, ...] | None = None) -> None:
        super().__init__(classes="field-row")
        self.spec = spec
        self.value = value
        self.choices = choices or spec.choices

    def compose(self) -> ComposeResult:
        spec = self.spec
        wid = widget_id(spec.key)
        with Horizontal(classes="field-line"):
            yield Label(spec.key, classes="field-label")
            if self.choices:
                shown = format_value(spec, self.value if self.value is not None else spec.default)
                options = [(c, c) for c in self.choices]
                if shown not in self.choices:
                    options.insert(0, (shown, shown))
                yield Select(options, value=shown, allow_blank=False, compact=True, id=wid)
            else:
                placeholder = "" if spec.default is None else f"default {format_value(spec, spec.default)}"
                yield Input(format_value(spec, self.value), placeholder=placeholder, compact=True,
                            id=wid)
        yield Static("", classes="field-problem", id=f"p-{wid}", markup=False)


class AdjustScreen(AppScreen):
    """The form for one recipe; the original file is never changed."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save as…"),
        Binding("ctrl+r", "launch", "Launch"),
        Binding("ctrl+t", "quick_trial", "Quick trial",
                tooltip="max_steps 20, 200 training and 64 evaluation rows: a first try in minutes"),
        Binding("ctrl+o", "plan", "Plan", tooltip="the whole plan of the edits: memory by part (CPU and a "
                "GPU size), steps and tokens, and on request the time of a few real steps"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, entry: RecipeEntry, cwd: Path) -> None:
        super().__init__()
        self.entry = entry
        self.cwd = cwd
        self.base_dir = entry.path.parent.resolve()
        self.original = copy.deepcopy(entry.data)
        self.original.setdefault("name", entry.path.stem)
        self.edited = copy.deepcopy(self.original)
        try:
            self.original_text: str | None = entry.path.read_text(encoding="utf-8")
        except OSError:
            self.original_text = None
        self.revision = 0
        self.problems: list[str] = list(entry.problems)
        self.specs: dict[str, FieldSpec] = {}
        self.saved: tuple[Path, int] | None = None   # (file, revision it holds)
        self.set_aside: dict[str, Any] = {}   # options the chosen strategy does not take
        self.raw: dict[str, Any] = {}         # the "other keys" line: any key = value
        self.raw_problem: str | None = None   # why that line cannot be read

    # ------------------------------------------------------------------ layout

    def _strategies(self) -> dict[str, Any]:
        from ...plugins import get_plugin_host

        try:
            return dict(get_plugin_host().strategies)
        except PefttoolError:
            return {}

    def _strategy_rows(self) -> list[FieldRow]:
        strategy = self._strategies().get(str(get_dotted(self.edited, "method.strategy", DEFAULT_STRATEGY)))
        if strategy is None:
            return []
        rows = []
        for spec in strategy_fields(strategy.Options):
            self.specs[spec.key] = spec
            rows.append(FieldRow(spec, get_dotted(self.edited, spec.key)))
        return rows

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="adjust-body"):
            with VerticalScroll(id="adjust-form"):
                yield Label(f"Adjusting {self.original['name']} — the original file stays as it is",
                            id="adjust-title")
                yield Label("training", classes="form-heading")
                for spec in common_fields():
                    self.specs[spec.key] = spec
                    yield FieldRow(spec, get_dotted(self.edited, spec.key))
                yield Label("model and data", classes="form-heading")
                for spec in data_fields(str(get_dotted(self.edited, "task.type", ""))):
                    self.specs[spec.key] = spec
                    yield FieldRow(spec, get_dotted(self.edited, spec.key))
                yield Label("strategy", classes="form-heading")
                names = tuple(sorted(self._strategies())) or None
                # A select whose default is DEFAULT_STRATEGY: a recipe without method.strategy shows
                # it, and that is not counted as a change (choosing a default leaves it unset).
                strategy_spec = FieldSpec("method.strategy", "method.strategy",
                                          "how the model is trained (pefttool plugins lists them)",
                                          choices=names, default=DEFAULT_STRATEGY, raw_text=names is None)
                self.specs[strategy_spec.key] = strategy_spec
                yield FieldRow(strategy_spec, get_dotted(self.edited, "method.strategy", DEFAULT_STRATEGY))
                with Vertical(id="strategy-options"):
                    yield from self._strategy_rows()
                yield Label("other keys", classes="form-heading")
                with Horizontal(classes="field-line"):
                    yield Label("key = value", classes="field-label")
                    yield Input(placeholder="any recipe key; several: a = 1; b = \"x\"", compact=True,
                                id="f-raw")
                yield Static("", classes="field-problem", id="p-f-raw", markup=False)
            # Scrolls and takes focus (Tab): every problem can be read, however many.
            with VerticalScroll(id="adjust-side"):
                yield Static("", id="adjust-status")
                yield Static("", id="adjust-plan", markup=False)
                yield Static("", id="adjust-changes", markup=False)
                yield Static("", id="adjust-help")
        yield AppFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Adjust {self.original['name']}"
        self._show_problems()
        self.validate_edit(self.revision, self.current())

    def current(self) -> dict[str, Any]:
        """The recipe as the screen shows it: the form's values and the "other keys" line."""
        return with_raw(self.edited, self.raw)

    # ------------------------------------------------------------------ editing

    def _spec_for(self, widget: Widget) -> FieldSpec | None:
        for key, spec in self.specs.items():
            if widget.id == widget_id(key):
                return spec
        return None

    def _edit(self, spec: FieldSpec, value: Any) -> bool:
        """Apply one field's new value and validate; True if the strategy changed."""
        if value is not None and get_dotted(self.original, spec.key) is None and spec.choices \
                and value == spec.default:
            value = None   # choosing the default of an unset value leaves it unset
        missing = object()
        current = get_dotted(self.edited, spec.key, missing)
        if (value is None and current is missing) or (
                current == value and type(current) is type(value)):
            return False
        set_dotted(self.edited, spec.key, value)
        if spec.key == "method.strategy":
            self._drop_foreign_options()
        self.revision += 1
        self.validate_edit(self.revision, self.current())
        return spec.key == "method.strategy"

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "f-raw":
            self._raw_changed(event.value)
            return
        spec = self._spec_for(event.input)
        if spec is not None:
            self._edit(spec, parse_text(spec, event.value))

    def _raw_changed(self, text: str) -> None:
        try:
            self.raw, self.raw_problem = parse_raw(text), None
        except ValueError as exc:
            self.raw, self.raw_problem = {}, str(exc)
        self.revision += 1
        self.validate_edit(self.revision, self.current())

    def action_quick_trial(self) -> None:
        """Small sizes in the form (each field shows it), so a first try takes minutes."""
        for key, value in QUICK_TRIAL.items():
            for field in self.query(f"#{widget_id(key)}").results(Input):
                field.value = str(value)

    @on(Select.Changed)
    async def _select_changed(self, event: Select.Changed) -> None:
        spec = self._spec_for(event.select)
        if spec is not None and isinstance(event.value, str):
            if self._edit(spec, parse_text(spec, event.value)):
                await self._show_strategy_fields()

    def _drop_foreign_options(self) -> None:
        """Keep only the options the newly chosen strategy accepts; the others are set aside
        and come back when a strategy that takes them is chosen again (lora → full → lora
        keeps the recipe's r, alpha and dropout)."""
        strategy = self._strategies().get(str(get_dotted(self.edited, "method.strategy", DEFAULT_STRATEGY)))
        method = self.edited.get("method", {})
        if strategy is not None and isinstance(method, dict):
            allowed = set(strategy.Options.model_fields)
            for key in [k for k in method if k != "strategy" and k not in allowed]:
                self.set_aside[key] = method.pop(key)
            for key in [k for k in self.set_aside if k in allowed and k not in method]:
                method[key] = self.set_aside.pop(key)

    async def _show_strategy_fields(self) -> None:
        for key in [k for k in self.specs if k.startswith("method.") and k != "method.strategy"]:
            del self.specs[key]
        box = self.query_one("#strategy-options")
        await box.remove_children()   # before mounting: lora and qlora share field ids
        await box.mount_all(self._strategy_rows())
        self._show_problems()

    @on(DescendantFocus)
    def _focused(self, event: DescendantFocus) -> None:
        spec = self._spec_for(event.widget)
        if spec is not None:
            default = "" if spec.default in (None, "") else f" (default {format_value(spec, spec.default)})"
            self.query_one("#adjust-help", Static).update(f"[b]{spec.key}[/b]{default}\n{spec.help}")

    # ------------------------------------------------------------------ validation

    @work(thread=True, exclusive=True, exit_on_error=False, group="validate",
          name="validating the recipe")
    def validate_edit(self, revision: int, data: dict[str, Any]) -> None:
        problems = check(data, str(self.entry.path), self.base_dir)
        self.post_message(RecipeChecked(revision, problems))
        if not problems and getattr(self.app, "estimate_plans", False) \
                and revision == self.revision:  # a newer edit will be estimated instead
            self.post_message(PlanEstimated(revision, "plan: estimating…"))
            line = plan_line(data, str(self.entry.path), self.base_dir)
            self.post_message(PlanEstimated(revision, line))

    def on_recipe_checked(self, message: RecipeChecked) -> None:
        if message.revision != self.revision:
            return  # an answer to an older edit
        self.problems = ([f"other keys: {self.raw_problem}"] if self.raw_problem else []) + message.problems
        self._show_problems()
        if self.problems:
            self._show_plan("")

    def on_plan_estimated(self, message: PlanEstimated) -> None:
        if message.revision == self.revision:
            self._show_plan(message.text)

    def _show_plan(self, text: str) -> None:
        line = self.query_one("#adjust-plan", Static)
        line.update(text)
        line.display = bool(text)

    def _show_problems(self) -> None:
        shown: set[str] = set()
        for key in self.specs:
            mine = problems_for(key, self.problems)
            shown.update(mine)
            for box in self.query(f"#p-{widget_id(key)}").results(Static):   # FieldRow's problem line
                box.update("\n".join(f"✗ {p}" for p in mine))
                box.display = bool(mine)
        status = self.query_one("#adjust-status", Static)
        if self.problems:
            lines = [f"✗ {len(self.problems)} problem(s)"]
            lines += [f"• {p}" for p in self.problems]
            status.update("\n".join(lines))
            status.set_class(True, "invalid")
        else:
            status.update("✓ validates")
            status.set_class(False, "invalid")
        for box in self.query("#p-f-raw").results(Static):   # the "other keys" line's own problems
            mine = [p for p in self.problems if p.startswith("other keys:")
                    or any(p.startswith(f"{k}:") for k in self.raw)]
            box.update("\n".join(f"✗ {p}" for p in mine))
            box.display = bool(mine)
        overrides = overrides_between(self.original, self.current())
        changes = self.query_one("#adjust-changes", Static)
        if overrides is None:
            changes.update("changed: options removed (launch writes the adjusted recipe)")
        elif overrides:
            changes.update("changed:\n" + "\n".join(f"  {o}" for o in overrides))
        else:
            changes.update("no changes yet")

    # ------------------------------------------------------------------ actions

    def action_back(self) -> None:
        """Back to the recipes; edits not saved are discarded only when the user says so."""
        saved = self.saved[0] if self.saved is not None else None
        overrides = overrides_between(self.original, self.current())
        if (self.saved is not None and self.saved[1] == self.revision) or overrides == []:
            self.dismiss(saved)
            return
        from .modals import ConfirmModal

        def answered(discard: bool | None) -> None:
            if discard:
                self.dismiss(saved)

        what = "the options removed" if overrides is None else f"{len(overrides)} change(s)"
        self.app.push_screen(ConfirmModal(f"Discard {what} not saved? (Save as… keeps them: ctrl+s)",
                                          yes="Discard", no="Keep editing"), answered)

    def action_plan(self) -> None:
        """`pefttool plan` of the recipe as edited (a screen; Esc comes back to the form)."""
        from .plan import PlanScreen

        if self.raw_problem or self.problems:
            self.notify("the recipe does not validate yet: fix the ✗ lines first", title="No plan")
            return
        name = str(self.edited.get("name") or self.entry.path.stem)
        self.app.push_screen(PlanScreen(self.current(), str(self.entry.path), self.base_dir, name))

    def action_save(self) -> None:
        from .modals import SaveAsModal

        stem = str(self.edited.get("name") or self.entry.path.stem)
        if stem == self.original["name"]:
            stem += "-adjusted"
        self.app.push_screen(SaveAsModal(free_path(self.cwd, stem), self.cwd), self._save_to)

    def _save_to(self, path: Path | None) -> None:
        if path is None:
            return
        data = absolutize_paths(self.current(), self.base_dir, path.parent)
        text = recipe_text(data, self.original_text, str(self.entry.path))
        try:
            write_new_file(path, text)
        except FileExistsError:
            self.pefttool_app.show_error("Not saved", f"{path} already exists; files are never overwritten.")
            return
        except OSError as exc:
            self.pefttool_app.show_error("Not saved", f"{path}: {exc.strerror or exc}")
            return
        self.saved = (path, self.revision)
        self.notify(f"saved {path}", title="Recipe saved")

    def action_launch(self) -> None:
        problems = check(self.current(), str(self.entry.path), self.base_dir)
        if self.raw_problem:
            problems = [f"other keys: {self.raw_problem}", *problems]
        if problems:
            self.problems = problems
            self._show_problems()
            self.pefttool_app.show_error("The adjusted recipe does not validate",
                                "\n".join(f"- {p}" for p in problems))
            return
        name = str(self.edited.get("name") or self.entry.path.stem)
        edited = self.current()
        if self.saved is not None and self.saved[1] == self.revision:
            saved = self.saved[0]
            self.pefttool_app.confirm_launch(f"{name} ({saved.name})",
                                             lambda: self.pefttool_app.launch(saved, [], name))
            return
        overrides = overrides_between(self.original, edited)
        if overrides is not None:
            start = lambda: self.pefttool_app.launch(self.entry.path, overrides, name)  # noqa: E731
        else:
            start = lambda: self.pefttool_app.launch(None, [], name, adjusted=(  # noqa: E731
                edited, self.original_text, self.entry.path))
        changes = f" with {len(overrides)} change(s)" if overrides else " as adjusted"
        self.pefttool_app.confirm_launch(f"{name}{changes}", start)
