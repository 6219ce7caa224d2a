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
                                 "pefttool.events, pefttool.runs, pefttool.cli")

    assert loaded == []


def test_loading_the_plugins_loads_neither_torch_nor_textual():
    loaded = heavy_modules_after("from pefttool.plugins import get_plugin_host\n"
                                 "assert get_plugin_host().strategies")

    assert loaded == []


@pytest.mark.parametrize("argv", [("--help",), ("validate", "recipes/lora.toml"), ("plugins",),
                                  ("plan", "--help"),
                                  ("validate", "recipes/lora.toml", "--set", "train.lr=2e-4")])
def test_cli_commands_that_need_no_model_load_neither_torch_nor_textual(argv):
    assert heavy_modules_after(cli(*argv)) == []


def test_only_the_tui_imports_textual():
    pattern = re.compile(r"^\s*(?:import|from)\s+textual", re.MULTILINE)  # textual_plotext too
    offenders = [str(path.relative_to(REPO))
                 for path in sorted((REPO / "pefttool").rglob("*.py"))
                 if "tui" not in path.relative_to(REPO / "pefttool").parts[:1]
                 and pattern.search(path.read_text(encoding="utf-8"))]

    assert offenders == []
