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
