"""The core stays light: importing pefttool, asking for --help or validating a recipe loads
neither torch nor textual (a fresh interpreter each, so nothing else in the test run counts)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "textual", "transformers", "datasets", "peft", "accelerate")


def heavy_modules_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; return the heavy top-level packages it imported."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PEFTTOOL_PLUGINS", None)
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def cli(*argv: str) -> str:
    """Code that runs `pefttool ARGV` in-process, as the console script would."""
    return (f"from pefttool.cli import main\n"
            f"try:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass")


def test_importing_the_api_loads_neither_torch_nor_textual():
    loaded = heavy_modules_after("import pefttool, pefttool.recipe, pefttool.plugins, "
                                 "pefttool.events, pefttool.runfolder.summary, pefttool.cli")

    assert loaded == []


def test_loading_the_plugins_loads_neither_torch_nor_textual():
    loaded = heavy_modules_after("from pefttool.plugins import get_plugin_host\n"
                                 "assert get_plugin_host().strategies")

    assert loaded == []


@pytest.mark.parametrize("argv", [("--help",), ("validate", "recipes/lora.toml"), ("plugins",),
                                  ("plan", "--help"),
                                  ("validate", "recipes/lora.toml", "--set", "train.lr=2e-4"),
                                  ("generate", "--help"), ("inspect", "--help"), ("plot", "--help")])
def test_cli_commands_that_need_no_model_load_neither_torch_nor_textual(argv):
    assert heavy_modules_after(cli(*argv)) == []


def test_only_the_tui_imports_textual():
    pattern = re.compile(r"^\s*(?:import|from)\s+textual", re.MULTILINE)  # textual_plotext too
    offenders = [str(path.relative_to(REPO))
                 for path in sorted((REPO / "pefttool").rglob("*.py"))
                 if "tui" not in path.relative_to(REPO / "pefttool").parts[:1]
                 and pattern.search(path.read_text(encoding="utf-8"))]

    assert offenders == []


def modules_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; return every module it imported."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_the_recipe_module_does_not_import_the_plugin_host():
    loaded = modules_after("import pefttool.recipe")

    assert "pefttool.recipe" in loaded
    assert "pefttool.plugins" not in loaded
    assert not any(m.startswith("pefttool_") for m in loaded)  # no plugin was loaded either


def test_a_recipe_validates_against_schemas_passed_in_without_loading_any_plugin():
    # The strategy's options and the tasks reach validation as a parameter: no entry point is read.
    code = (
        "from pydantic import BaseModel, ConfigDict\n"
        "from pefttool.recipe import PluginSchemas, RecipeError, validate_recipe\n"
        "class Bitfit(BaseModel):\n"
        "    model_config = ConfigDict(extra='forbid')\n"
        "    biases_only: bool = True\n"
        "from pefttool.tasks import Metric, Task\n"
        "class Tagging(Task):\n"
        "    type, model_class, peft_task_type = 'tagging', 'AutoModelForTokenClassification', 'TOKEN_CLS'\n"
        "    model_noun, default_metric, has_labels, sequence_labels = 'a tagger', 'f1', True, True\n"
        "    metrics = {'f1': Metric('f1', lambda o: 0.0, higher_is_better=True)}\n"
        "schemas = PluginSchemas(strategies={'bitfit': Bitfit}, tasks={'tagging': Tagging()})\n"
        "data = {'model': {'path': 'org/model'}, 'task': {'type': 'tagging'},\n"
        "        'data': {'train': 'train.csv'}, 'method': {'strategy': 'bitfit', 'biases_only': False}}\n"
        "recipe = validate_recipe(data, plugins=schemas, check_files=False)\n"
        "assert recipe.strategy_options.biases_only is False and recipe.metric == 'f1'\n"
        "data['method'] = {'strategy': 'lora'}\n"
        "try:\n"
        "    validate_recipe(data, plugins=schemas, check_files=False)\n"
        "except RecipeError as exc:\n"
        "    assert \"no strategy named 'lora'\" in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('lora is not in the schemas handed in')\n")
    loaded = modules_after(code)

    assert "pefttool.plugins" not in loaded
    assert not any(m.startswith("pefttool_") for m in loaded)


def test_the_built_in_plugins_and_the_headless_observer_take_hookimpl_from_the_hookspecs():
    # `hookimpl` lives beside the hook specs; `from pefttool import hookimpl` is for third parties.
    root_import = re.compile(r"^\s*(?:from pefttool import|import pefttool\s*$)", re.MULTILINE)
    files = [*sorted((REPO / "plugins").rglob("*.py")), REPO / "pefttool" / "headless.py"]
    offenders = [str(p.relative_to(REPO)) for p in files if root_import.search(p.read_text(encoding="utf-8"))]

    assert offenders == []
    assert all("from pefttool.hookspecs import hookimpl" in (REPO / "plugins" / name / "__init__.py").read_text()
               for name in ("pefttool_full", "pefttool_lora", "pefttool_qlora"))
    import pefttool
    from pefttool import hookspecs

    assert pefttool.hookimpl is hookspecs.hookimpl


def test_no_core_module_names_a_built_in_strategy():
    """The built-ins have no special powers: outside plugins/, no module branches on a built-in
    strategy's name or imports its package. The one name allowed is the default strategy of a
    recipe without method.strategy (recipe.DEFAULT_STRATEGY)."""
    name = re.compile(r'["\'](full|lora|qlora)["\']|(import|from)\s+pefttool_(full|lora|qlora)\b')
    found = []
    for path in sorted((REPO / "pefttool").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if name.search(code) and not code.startswith("DEFAULT_STRATEGY = "):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == []


# Where a built-in task's name still appears in the core (the tasks are plugins in plugins/):
# only the recipe check_strategy trains for plugin authors (pefttool.testing).
TASK_NAME_ALLOWED = {
    "pefttool/testing.py": 1,         # check_strategy's recipe (a classification run)
}


def test_no_core_module_branches_on_a_task_name_beyond_the_known_few():
    """plan, generate, inspect, the TUI, recipe checks and the data pipeline ask the task
    object (has_labels, formats, packs, data_keys, row_format...), never its name."""
    name = re.compile(r'["\'](classification|causal-lm)["\']')
    found: dict[str, int] = {}
    for path in sorted((REPO / "pefttool").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        for line in path.read_text(encoding="utf-8").splitlines():
            code = line.split("#", 1)[0]
            found[rel] = found.get(rel, 0) + len(name.findall(code))
    assert {k: v for k, v in found.items() if v} == TASK_NAME_ALLOWED


def test_no_core_module_branches_on_a_task_type_or_row_kind():
    """The data pipeline calls the row format's methods (pefttool/data/formats.py) and the
    rest asks the task object: no `task.type ==`, `kind ==` or `format == "chat"` dispatch is
    left in the core (generate renders prompts through the row format's methods)."""
    branch = re.compile(r"task\.type\s*(==|!=|in\s+[(\[{])|\bkind\s*(==|!=|in\s+[(\[{])|\.kind\b|data_kind"
                        r"|\b(fmt|format)\s*(==|!=)\s*[\"'](chat|text|instruction)[\"']")
    found = []
    for path in sorted((REPO / "pefttool").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if branch.search(line.split("#", 1)[0]):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == []


def test_only_the_run_package_names_the_run_folders_files():
    """The run folder's layout has one owner, pefttool/runfolder/: no other module (plugins
    included) spells one of its file names; they import the constants instead."""
    name = re.compile(r'["\'](events\.jsonl|trainer_state\.json|stderr\.log|metrics\.json|samples\.jsonl'
                      r'|plots\.png|\.pefttool-run)["\']')
    found = []
    for root in ("pefttool", "plugins"):
        for path in sorted((REPO / root).rglob("*.py")):
            if "runfolder" in path.relative_to(REPO).parts:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if name.search(line.split("#", 1)[0]):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == []


def test_every_module_imports_alone():
    """Each module of the package imports on its own, with nothing of pefttool loaded before
    it: an import order that only works because another module was imported first (the sign
    of an import circle) fails here. One interpreter; pefttool's modules are dropped from
    sys.modules before each import."""
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for p in (REPO / "pefttool").rglob("*.py") if p.name != "__main__.py")
    probe = (
        "import importlib, sys, traceback\n"
        f"failed = []\nfor name in {modules!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'pefttool' or m.startswith('pefttool.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as exc:\n        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", result.stdout
    assert len(modules) > 40


def _import_edges() -> dict[str, set[str]]:
    """pefttool module → the pefttool modules it imports, at any depth (function-local imports
    too, since they are dependencies all the same), except under `if TYPE_CHECKING:`."""
    import ast

    files = {}
    for path in (REPO / "pefttool").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(sub) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for sub in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                if node.level:
                    base = base[:len(base) - (node.level - 1)]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                targets = [base_name] + [f"{base_name}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != module and not (is_pkg and target.startswith(module + ".")):
                    edges[module].add(target)
    return edges


def test_the_package_has_no_import_circle():
    """A lazy import that closes a circle is still a circle (docs/DESIGN.md): none in pefttool."""
    import graphlib

    try:
        graphlib.TopologicalSorter(_import_edges()).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")
