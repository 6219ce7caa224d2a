"""Finding recipes and runs on disk (for `pefttool recipes`, `pefttool runs` and the TUI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PefttoolError

BUILTIN_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class RecipeEntry:
    path: Path
    origin: str                      # built-in | local
    data: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    readable: bool = True            # False: not valid TOML (its data is empty, not defaults)

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.path.stem)

    def get(self, dotted: str, default: Any = "") -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def find_recipes(cwd: Path | None = None, validate: bool = True) -> list[RecipeEntry]:
    """Built-in recipes, then `*.toml` recipes in the current folder and its `recipes/`."""
    from .data.columns import column_problems
    from .recipe import RecipeError, load_recipe, read_toml

    cwd = Path.cwd() if cwd is None else cwd
    seen: set[Path] = set()
    entries = []
    places = [(BUILTIN_RECIPES, "built-in"), (cwd, "local"), (cwd / "recipes", "local")]
    for folder, origin in places:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            real = path.resolve()
            if real in seen or path.name == "pyproject.toml":
                continue
            seen.add(real)
            entry = RecipeEntry(path=path, origin=origin)
            try:
                entry.data = read_toml(path)
            except RecipeError as exc:  # unreadable: listed, so its problem is seen
                entries.append(RecipeEntry(path=path, origin=origin, problems=exc.problems, readable=False))
                continue
            if "model" not in entry.data and "task" not in entry.data:
                continue  # some other TOML file, not a recipe
            if validate:
                try:
                    entry.problems = column_problems(load_recipe(path))   # as `pefttool validate`
                except RecipeError as exc:
                    entry.problems = exc.problems
                except PefttoolError as exc:
                    entry.problems = [str(exc)]
            entries.append(entry)
    return entries
