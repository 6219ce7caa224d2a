"""Strategies come from plugins, the built-ins included; a third-party plugin installs like any
package, and a broken one is named in a one-line error instead of being silently skipped."""

from __future__ import annotations

import importlib.metadata as md
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import Field

import pefttool
from pefttool import PluginError, Strategy, StrategyOptions, load_recipe
from pefttool.events import LogEvent
from pefttool.plugins import PluginHost, get_plugin_host
from plugin_pkg.sitedir import add_distribution, install_demo_plugin


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A throwaway site-packages on sys.path; modules imported from it are forgotten after."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", "") and str(folder) in sys.modules[name].__file__:
            del sys.modules[name]


def loaded(select: str = "") -> PluginHost:
    host = PluginHost()
    host.load_entry_points(select)
    return host


def install_plugin(site: Path, name: str, source: str) -> None:
    """`pip install` a one-module plugin distribution `pefttool-NAME` with plugin name NAME."""
    module = f"pefttool_{name}_plugin"
    add_distribution(site, f"pefttool-{name}", "1.0", {name: module},
                     {module: textwrap.dedent(source)})


def write_recipe(folder: Path, method: str) -> Path:
    (folder / "model").mkdir(exist_ok=True)
    (folder / "train.csv").write_text("text,label\na,x\nb,y\n")
    path = folder / "recipe.toml"
    path.write_text(textwrap.dedent(f"""
        [model]
        path = "model"
        [task]
        type = "classification"
        [data]
        train = "train.csv"
        [method]
    """) + textwrap.dedent(method))
    return path


# ------------------------------------------------------------------ built-ins


def test_the_built_in_strategies_are_ordinary_entry_point_plugins():
    declared = {ep.name: ep.value for ep in md.entry_points(group="pefttool")}
    host = loaded()

    assert {"full": "pefttool_full", "lora": "pefttool_lora", "qlora": "pefttool_qlora"}.items() \
        <= declared.items()
    assert sorted(host.strategies) == ["full", "lora", "qlora"]
    assert host.strategies["lora"].plugin == "lora"
    info = host.infos["qlora"]
    assert (info.module, info.distribution, info.strategies) == ("pefttool_qlora", "pefttool", ["qlora"])
    assert info.hooks == ["pefttool_register_strategies"]


# ------------------------------------------------------------------ a third-party plugin


def test_an_installed_third_party_plugin_adds_its_strategy(site, tmp_path):
    install_demo_plugin(site)

    host = loaded()
    recipe = load_recipe(write_recipe(tmp_path, 'strategy = "freeze-lower"\nfrozen_layers = 4\n'),
                         plugins=host)

    assert host.infos["demo"].distribution == "pefttool-demo-plugin"
    assert host.infos["demo"].version == "0.3.0"
    assert host.strategies["freeze-lower"].plugin == "demo"
    assert recipe.strategy_options.frozen_layers == 4
    assert recipe.strategy_options.freeze_embeddings is True          # its own default
    assert recipe.to_dict()["method"] == {"strategy": "freeze-lower", "frozen_layers": 4,
                                          "freeze_embeddings": True}


def test_a_third_party_strategys_options_are_as_strict_as_the_built_ins(site, tmp_path):
    install_demo_plugin(site)
    path = write_recipe(tmp_path, 'strategy = "freeze-lower"\nfrozen_layers = -1\n'
                                  'freeze_embedings = true\nr = 8\n')

    with pytest.raises(pefttool.RecipeError) as caught:
        load_recipe(path, plugins=loaded())

    assert caught.value.problems == [
        "method.frozen_layers: Input should be greater than or equal to 0 (got -1)",
        "method.freeze_embedings: unknown key (did you mean 'freeze_embeddings'?)",
        "method.r: unknown key; allowed: strategy, frozen_layers, freeze_embeddings",
    ]


# ------------------------------------------------------------------ broken plugins


def test_two_plugins_registering_one_strategy_name_are_both_named(site):
    install_plugin(site, "copycat", """
        import pefttool
        from pefttool import Strategy

        class MyLora(Strategy):
            name = "lora"

        @pefttool.hookimpl
        def pefttool_register_strategies(register):
            register(MyLora())
    """)

    with pytest.raises(PluginError) as caught:
        loaded()

    message = str(caught.value)
    assert "strategy 'lora' is registered by both plugin 'copycat' and plugin 'lora'" in message
    assert "PEFTTOOL_PLUGINS=-lora" in message


def test_a_plugin_that_fails_to_import_is_named_in_one_line(site):
    install_plugin(site, "broken", """
        import pefttool
        import a_dependency_nobody_installed
    """)

    host = loaded()   # the others load; the broken one is kept aside with its error

    message = host.broken["broken"]
    assert "broken" not in host.infos and "lora" in host.strategies
    assert "\n" not in message
    assert message.startswith("plugin 'broken' (pefttool_broken_plugin) failed to import: "
                              "ModuleNotFoundError: No module named 'a_dependency_nobody_installed'")
    assert "PEFTTOOL_PLUGINS=-broken" in message


def test_the_error_says_how_to_skip_a_broken_plugin_and_skipping_works(site):
    install_plugin(site, "broken", "raise RuntimeError('half-installed')\n")

    host = loaded("-broken")

    assert "broken" not in host.infos and "lora" in host.strategies


def test_a_misspelled_hook_is_an_error_not_silence(site):
    install_plugin(site, "typo", """
        import pefttool

        @pefttool.hookimpl
        def pefttool_run_strat(event):
            print("never called")
    """)

    host = loaded()   # not silence: the plugin is kept out, with the error `pefttool plugins` shows

    assert "typo" not in host.infos and host.broken["typo"] == (
        "plugin 'typo' implements 'pefttool_run_strat', which is not a pefttool hook "
        "(did you mean 'pefttool_run_start'?); check the spelling against pefttool/hookspecs.py")


def test_a_hook_without_the_marker_is_an_error_not_silence():
    class Forgetful:
        def pefttool_run_end(self, event):
            pass

    host = loaded("full")

    with pytest.raises(PluginError, match="plugin 'forgetful' defines pefttool_run_end without "
                                          "the @pefttool.hookimpl marker"):
        host.register(Forgetful(), "forgetful")
    assert "forgetful" not in host.infos and not host.pm.has_plugin("forgetful")


def test_a_hook_with_an_argument_pefttool_never_passes_is_one_line():
    class Confused:
        @pefttool.hookimpl
        def pefttool_run_end(self, event, model):
            pass

    with pytest.raises(PluginError) as caught:
        loaded("full").register(Confused(), "confused")

    assert str(caught.value).startswith("plugin 'confused' is invalid: ")
    assert "\n" not in str(caught.value) and "'model'" in str(caught.value)


def test_two_distributions_claiming_one_plugin_name_are_both_named(site):
    install_plugin(site, "lora", "")  # a distribution 'pefttool-lora' declaring plugin 'lora'

    with pytest.raises(PluginError) as caught:
        loaded()

    assert "'pefttool' and 'pefttool-lora'" in str(caught.value) or \
        "'pefttool-lora' and 'pefttool'" in str(caught.value)


def test_registering_something_that_is_not_a_strategy_is_refused():
    class Sloppy:
        @pefttool.hookimpl
        def pefttool_register_strategies(self, register):
            register("lora2")

    host = loaded("full")
    with pytest.raises(PluginError, match="plugin 'sloppy' registered 'lora2', which is not a named"):
        host.register(Sloppy(), "sloppy")
    assert "sloppy" not in host.infos


# ------------------------------------------------------------------ PEFTTOOL_PLUGINS


@pytest.mark.parametrize("select,expected", [
    ("", ["causal-lm", "classification", "full", "lora", "preference", "qlora"]),
    ("lora", ["lora"]),
    ("full, qlora", ["full", "qlora"]),
    ("-qlora", ["causal-lm", "classification", "full", "lora", "preference"]),
    ("-qlora,-full,-causal-lm", ["classification", "lora", "preference"]),
])
def test_plugins_env_var_chooses_which_plugins_load(monkeypatch, select, expected):
    monkeypatch.setenv("PEFTTOOL_PLUGINS", select)

    host = PluginHost()
    host.load_entry_points()

    assert sorted(host.infos) == expected


def test_plugins_env_var_naming_a_missing_plugin_is_an_error(monkeypatch):
    monkeypatch.setenv("PEFTTOOL_PLUGINS", "lora,lorra")

    with pytest.raises(PluginError, match="PEFTTOOL_PLUGINS names 'lorra', but no plugin"):
        PluginHost().load_entry_points()


# ------------------------------------------------------------------ registering in a test


class EchoOptions(StrategyOptions):
    loudness: int = Field(1, ge=1, le=11)


class EchoStrategy(Strategy):
    name = "echo"
    description = "a strategy that exists only in this test"
    Options = EchoOptions


class EchoPlugin:
    """A plugin defined in the test itself, as `llm`'s tests register theirs."""

    def __init__(self) -> None:
        self.logged: list[str] = []

    @pefttool.hookimpl
    def pefttool_register_strategies(self, register):
        register(EchoStrategy())

    @pefttool.hookimpl
    def pefttool_log(self, event):
        self.logged.append(event.message)


@pytest.fixture
def echo_plugin():
    host = get_plugin_host()
    plugin = EchoPlugin()
    host.register(plugin, name="echo-plugin")
    yield plugin
    host.unregister("echo-plugin")


def test_a_plugin_registered_by_a_fixture_serves_recipes(echo_plugin, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, 'strategy = "echo"\nloudness = 11\n'))

    assert recipe.strategy_options.loudness == 11
    get_plugin_host().fire("pefttool_log", event=LogEvent(level="info", message="hello"))
    assert echo_plugin.logged == ["hello"]


def test_unregistering_a_plugin_removes_its_strategies(tmp_path):
    host = get_plugin_host()
    host.register(EchoPlugin(), name="echo-plugin")
    host.unregister("echo-plugin")

    with pytest.raises(pefttool.RecipeError, match="no strategy named 'echo'"):
        load_recipe(write_recipe(tmp_path, 'strategy = "echo"\n'))
    assert "echo-plugin" not in host.infos and not host.pm.has_plugin("echo-plugin")


# ------------------------------------------------------------------ a plugin raising in a hook


def test_a_plugin_raising_in_an_observer_hook_is_named_with_the_hook():
    class Noisy:
        @pefttool.hookimpl
        def pefttool_log(self, event):
            raise OSError("disk full")

    host = loaded("full")
    host.register(Noisy(), "noisy")

    with pytest.raises(PluginError) as caught:
        host.fire("pefttool_log", event=LogEvent(level="info", message="50 rows dropped"))

    assert str(caught.value) == "plugin 'noisy' raised in pefttool_log: OSError: disk full"


def test_a_plugin_raising_while_registering_strategies_leaves_the_host_as_it_was():
    class Failing:
        @pefttool.hookimpl
        def pefttool_register_strategies(self, register):
            register(EchoStrategy())
            raise KeyError("config")

    host = loaded("full")
    with pytest.raises(PluginError, match="plugin 'failing' raised in pefttool_register_strategies: "
                                          "KeyError: 'config'"):
        host.register(Failing(), "failing")

    assert sorted(host.strategies) == ["full"] and "failing" not in host.infos


def test_observers_that_take_no_arguments_are_still_called():
    calls = []

    class Minimal:
        @pefttool.hookimpl
        def pefttool_log(self):
            calls.append("log")

    host = loaded("full")
    host.register(Minimal(), "minimal")
    host.fire("pefttool_log", event=LogEvent(level="info", message="x"))

    assert calls == ["log"]
