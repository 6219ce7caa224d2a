"""Plugin-kit details not covered by test_plugin_failures: per-plugin import time (measured,
warned above a threshold), `plugins --json` listing hooks and option schemas."""

from __future__ import annotations

import json
import sys

import pytest

from pefttool import plugins as plugins_module
from pefttool.cli import main
from plugin_pkg.sitedir import add_distribution


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(plugins_module, "_host", None)
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if str(folder) in (getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]


def _install(site, name, source):
    add_distribution(site, f"pefttool-{name}", "1.0", {name: f"pefttool_{name}_plugin"},
                     {f"pefttool_{name}_plugin": source})


def test_plugins_json_lists_hooks_option_schemas_and_import_time(site, capsys, monkeypatch):
    _install(site, "chatty", "print('hello from chatty')\n")
    monkeypatch.setattr(plugins_module, "SLOW_IMPORT_S", 0.0)  # every import is "slow": warned

    assert main(["plugins", "--json"]) == 0

    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert "hello from chatty" in err and "hello" not in out
    assert "warning: plugin 'chatty' took" in err  # the import-time warning names the plugin
    lora = next(r for r in rows if r["name"] == "lora")
    assert lora["hooks"] == ["pefttool_register_strategies"] and lora["import_s"] >= 0
    assert lora["strategy_options"]["lora"]["properties"]["r"]["default"] == 8


def test_a_fast_plugin_import_is_not_warned(site, capsys):
    _install(site, "quick", "X = 1\n")

    assert main(["plugins"]) == 0

    out, err = capsys.readouterr()
    assert "took" not in err
    assert "r (default 8): adapter rank" in out  # the text listing shows each strategy's options


# ------------------------------------------------------------------ the code plugin authors copy

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
COPIED = sorted([*(REPO / "plugins").rglob("*.py"), *(REPO / "examples").glob("pefttool-*/pefttool_*/*.py")])


def _functions(path):
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", COPIED, ids=lambda p: str(p.relative_to(REPO)))
def test_the_built_in_and_example_plugins_are_fully_annotated_and_documented(path):
    assert _undocumented(path) == []


@pytest.mark.parametrize("task", [False, True], ids=["strategy", "task"])
def test_a_scaffolded_plugin_is_fully_annotated_and_documented(task, tmp_path):
    from pefttool.scaffold import new_plugin

    root = new_plugin("demo_one", tmp_path, task=task)

    assert _undocumented(root / "pefttool_demo_one" / "__init__.py") == []
    compile((root / "tests" / "test_demo_one.py").read_text(), "test_demo_one.py", "exec")


def _undocumented(path):
    import ast

    problems = []
    for fn in _functions(path):
        params = [a for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs if a.arg not in ("self", "cls")]
        params += [a for a in (fn.args.vararg, fn.args.kwarg) if a is not None]
        untyped = [a.arg for a in params if a.annotation is None]
        if untyped or fn.returns is None:
            problems.append(f"{fn.name}: untyped {untyped or 'return'}")
        if not ast.get_docstring(fn) and not fn.name.startswith("_"):
            problems.append(f"{fn.name}: no docstring")
    return problems


def test_every_built_in_strategy_option_is_described_in_plugins_json(capsys):
    assert main(["plugins", "--json"]) == 0

    rows = json.loads(capsys.readouterr().out)
    schemas = {s: schema for row in rows for s, schema in row["strategy_options"].items()}
    assert {"full", "lora", "qlora"} <= set(schemas)
    undescribed = [f"{s}.{field}" for s, schema in schemas.items()
                   for field, spec in schema.get("properties", {}).items() if not spec.get("description")]
    assert undescribed == []
    assert schemas["qlora"]["properties"]["quant_type"]["description"].startswith("4-bit format")


def test_trace_hooks_also_traces_the_strategy_methods_a_plugin_overrides(capsys, monkeypatch):
    from pefttool.strategy import GuardedStrategy, Strategy

    class Bitfit(Strategy):
        name = "bitfit"

        def wrap(self, model, recipe, options):
            return model

    import torch

    model = torch.nn.Linear(2, 2)   # wrap's result is checked to be a module
    strategy = Bitfit()
    strategy.plugin = "pefttool-bitfit"
    guarded = GuardedStrategy(strategy)
    monkeypatch.setenv("PEFTTOOL_TRACE_HOOKS", "1")
    guarded.wrap(model, None, None)
    guarded.param_groups(model, None, None)  # the default answers: not the plugin's call
    monkeypatch.delenv("PEFTTOOL_TRACE_HOOKS")
    guarded.wrap(model, None, None)

    err = capsys.readouterr().err
    assert err.count("[hook] bitfit.wrap → pefttool-bitfit:") == 1 and " ms" in err
    assert "param_groups" not in err
