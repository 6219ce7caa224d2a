"""A plugin author learns the API from its docstrings: every hook says when it fires and what to
return, and every part of the `Strategy` contract is documented (as datasette's test_docs does)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import pefttool.strategy
from pefttool import hookspecs
from pefttool.events import EVENT_TYPES
from pefttool.plugins import get_plugin_host
from pefttool.strategy import Strategy

REPO = Path(__file__).resolve().parent.parent

HOOKS = sorted(name for name, value in vars(hookspecs).items()
               if name.startswith("pefttool_") and inspect.isfunction(value))
OBSERVERS = [name for name in HOOKS if not name.startswith("pefttool_register_")]
STRATEGY_METHODS = sorted(name for name, value in vars(Strategy).items()
                          if inspect.isfunction(value) and not name.startswith("_"))


def test_there_are_hooks_to_document():
    assert "pefttool_register_strategies" in HOOKS and len(OBSERVERS) >= 6


@pytest.mark.parametrize("name", HOOKS)
def test_every_function_in_hookspecs_is_a_hook(name):
    assert hasattr(getattr(hookspecs, name), "pefttool_spec"), f"{name} lacks the @hookspec marker"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_says_when_it_fires_and_what_to_return(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    summary = doc.split("\n\n")[0]

    assert summary.endswith("."), f"{name}: the first paragraph should say when it fires"
    assert len(summary.split()) >= 5, f"{name}: '{summary}' says too little about when it fires"
    assert "Return" in doc, f"{name}: say what to return (or 'Return nothing.')"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_argument_is_described(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    for argument in inspect.signature(getattr(hookspecs, name)).parameters:
        assert f"`{argument}" in doc, f"{name}: describe its argument `{argument}`"


def test_each_observer_hook_receives_one_kind_of_event():
    """Every event written to events.jsonl reaches plugins through exactly one hook."""
    annotations = {name: [p.annotation for p in
                          inspect.signature(getattr(hookspecs, name)).parameters.values()]
                   for name in OBSERVERS}

    assert all(len(a) == 1 for a in annotations.values()), annotations
    received = sorted(a[0] for a in annotations.values())
    assert received == sorted(cls.__name__ for cls in EVENT_TYPES.values())


def test_the_plugin_guide_names_every_hook():
    text = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")

    assert [name for name in HOOKS if name not in text] == []


# ------------------------------------------------------------------ the Strategy contract


@pytest.mark.parametrize("name", STRATEGY_METHODS)
def test_every_strategy_method_is_documented(name):
    doc = inspect.getdoc(getattr(Strategy, name)) or ""

    assert len(doc.split()) >= 5, f"Strategy.{name} needs a docstring saying what it is for"


def test_the_strategy_class_names_what_a_subclass_sets():
    doc = inspect.getdoc(Strategy) or ""

    for attribute in ("name", "description", "Options"):
        assert f"`{attribute}`" in doc


def test_strategy_methods_are_the_expected_contract():
    assert STRATEGY_METHODS == ["check", "compute_loss", "describe", "for_inference", "load_kwargs",
                                "make_optimizer", "param_groups", "prepare_batch", "quantized_layout",
                                "save", "wrap", "wrap_for_estimate"]


def test_the_call_order_in_strategy_py_names_every_method():
    order = inspect.getdoc(pefttool.strategy) or ""

    assert [name for name in STRATEGY_METHODS if f"{name}()" not in order] == []


@pytest.mark.parametrize("strategy", ["full", "lora", "qlora"])
def test_built_in_strategies_describe_themselves_and_their_options(strategy):
    found = get_plugin_host().strategies[strategy]

    assert found.description, f"{strategy} needs a description (pefttool plugins shows it)"
    undocumented = [field for field, info in found.Options.model_fields.items() if not info.description]
    assert undocumented == [], f"{strategy}: options without a description: {undocumented}"


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_value_in_a_built_in_recipe_says_what_it_trades(recipe):
    uncommented = [line for line in recipe.read_text(encoding="utf-8").splitlines()
                   if "=" in line and not line.lstrip().startswith(("#", "["))
                   and "#" not in line.split("=", 1)[1]
                   and line.split("=", 1)[0].strip() not in ("name", "description", "prompt_template")]
    assert uncommented == []


# ------------------------------------------------------------------ docs/plugins.md (the guide)

GUIDE = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", HOOKS)
def test_the_plugin_guide_shows_each_hook_with_its_docstring(name):
    function = getattr(hookspecs, name)
    heading = f"### `{name}({', '.join(inspect.signature(function).parameters)})`"
    assert heading in GUIDE, f"docs/plugins.md lacks '{heading}'"
    section = GUIDE.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    assert _flat(inspect.getdoc(function)) == _flat(section), (
        f"docs/plugins.md: {name}'s text differs from its hookspec docstring; copy it over")


@pytest.mark.parametrize("method", STRATEGY_METHODS)
def test_the_plugin_guide_covers_each_strategy_method(method):
    assert f"`{method}(" in GUIDE, f"docs/plugins.md: the contract table lacks {method}"


def test_the_plugin_guide_lists_every_event_field():
    import dataclasses

    for cls in EVENT_TYPES.values():
        section = GUIDE.split(f"### `{cls.__name__}`", 1)[1].split("\n### ", 1)[0]
        for f in dataclasses.fields(cls):
            assert f"- `{f.name}`" in section, f"docs/plugins.md: {cls.__name__}.{f.name} undocumented"


# ------------------------------------------------------------------ the pages name what exists

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGES = [REPO_ROOT / "README.md", REPO_ROOT / "benchmarks" / "README.md",
         *sorted((REPO_ROOT / "docs").glob("*.md"))]
SECTIONS = ("model", "task", "data", "method", "train", "eval", "early_stopping", "output",
            "distributed")


def _code(text: str) -> list[str]:
    """The code in a Markdown page: fenced blocks and `inline spans`."""
    import re

    fenced = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return fenced + inline


# Keys of the example strategies the pages write out (not registered while the suite runs).
EXAMPLE_KEYS = {"method.lora"}   # docs/plugins.md "Building on LoRA": its [method.lora] table


def _recipe_keys() -> dict[str, set[str]]:
    from pefttool.recipe import Recipe

    keys = {s: set(Recipe.model_fields[s].annotation.model_fields) for s in SECTIONS}
    for strategy in get_plugin_host().strategies.values():
        keys["method"] |= set(strategy.Options.model_fields)
    for task in get_plugin_host().tasks.values():   # a task's [task] options (preference's loss…)
        keys["task"] |= set(task.Options.model_fields)
    return keys


def test_the_readme_is_a_landing_page():
    assert len((REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_command_and_recipe_key_a_page_names_exists(page):
    import re
    import tomllib

    from pefttool.cli import build_parser

    commands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    keys = _recipe_keys()
    wrong = []
    for code in _code(page.read_text(encoding="utf-8")):
        for command in re.findall(r"(?:^|[\s(`$])(?<!from )(?<!import )pefttool ([a-z][a-z-]*)", code,
                                  flags=re.M):
            if command not in commands:
                wrong.append(f"pefttool {command}")
        # a recipe key: not part of a dotted module path or a file name (model.safetensors)
        for section, key in re.findall(rf"(?<![\w./])({'|'.join(SECTIONS)})\.([a-z_]+)\b(?![.(/])", code):
            if key not in keys[section] and key not in ("safetensors", "bin", "json") \
                    and f"{section}.{key}" not in EXAMPLE_KEYS:
                wrong.append(f"{section}.{key}")
    for block in re.findall(r"```toml\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
        try:
            table = tomllib.loads(block)
        except tomllib.TOMLDecodeError:
            continue  # a fragment (an entry-point table, say)
        for section, values in table.items():
            if section in keys and isinstance(values, dict):
                wrong += [f"[{section}] {k}" for k in values if k not in keys[section]]
    assert wrong == [], f"{page.name} names what does not exist: {sorted(set(wrong))}"
