"""What a plugin author hits when something goes wrong: observers failing mid-run (checkpoint,
exit 3, resumable; or a warning), strategy errors named by strategy/plugin/method, hook
wrappers, `validate` running Strategy.check, and plugins misbehaving at import."""

from __future__ import annotations

import json
import sys

import pytest

import pefttool
from pefttool import PluginError, Strategy, load_recipe
from pefttool import plugins as plugins_module
from pefttool.checkpoints import latest_checkpoint
from pefttool.cli import main
from pefttool.engine import run_recipe
from pefttool.errors import PefttoolError
from pefttool.events import LogEvent
from pefttool.plugins import ObserverError, PluginHost, get_plugin_host
from plugin_pkg.sitedir import add_distribution
from tiny_models import write_tiny_recipe


class FailsAtStep:
    def __init__(self, step: int) -> None:
        self.step = step

    @pefttool.hookimpl
    def pefttool_step_end(self, event):
        if event.step >= self.step:
            raise ValueError("csv column missing")


def _recipe(tmp_path, model_dir, **overrides):
    overrides = {"train.epochs": 2, "train.log_every": 1, "eval.before_training": False, **overrides}
    return load_recipe(write_tiny_recipe(tmp_path, model_dir, "lora", overrides=overrides))


def test_an_observer_failing_mid_run_checkpoints_exits_3_and_resumes(tmp_path, tiny_classifier_dir):
    recipe = _recipe(tmp_path, tiny_classifier_dir)

    with pytest.raises(ObserverError) as caught:
        run_recipe(recipe, observers=(FailsAtStep(3),))

    error = caught.value
    assert error.exit_code == 3
    message = str(error)
    assert "raised in pefttool_step_end: ValueError: csv column missing" in message
    assert "plugin 'observer-" in message and "pefttool resume" in message and "\n" not in message
    run_dir = tmp_path / "runs" / "recipe"
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == "step-0000003"

    result = run_recipe(recipe, resume=True, run_dir=run_dir)
    assert result.status == "completed" and result.steps > 3


def test_on_error_warn_keeps_training_and_warns_once(tmp_path, tiny_classifier_dir, capsys):
    recipe = _recipe(tmp_path, tiny_classifier_dir, **{"plugins.on_error": "warn"})

    result = run_recipe(recipe, observers=(FailsAtStep(1),))

    assert result.status == "completed" and result.exit_code == 0
    err = capsys.readouterr().err
    assert err.count("raised in pefttool_step_end") == 1 and 'on_error = "warn"' in err


def test_an_exception_in_run_end_is_reported_without_changing_the_outcome(tmp_path, tiny_classifier_dir,
                                                                          capsys):
    class BadEnd:
        @pefttool.hookimpl
        def pefttool_run_end(self, event):
            raise RuntimeError("upload failed")

    result = run_recipe(_recipe(tmp_path, tiny_classifier_dir, **{"train.max_steps": 2}),
                        observers=(BadEnd(),))

    assert result.status == "completed" and result.exit_code == 0
    lines = [l for l in capsys.readouterr().err.splitlines() if "upload failed" in l]
    assert len(lines) == 1 and "pefttool_run_end" in lines[0] and "outcome stands" in lines[0]


class BrokenWrap(Strategy):
    name = "brokenwrap"
    description = "raises inside wrap, as PEFT does when no module matches"

    def wrap(self, model, recipe, options):
        raise KeyError("no module matched")


class PickyCheck(Strategy):
    name = "picky"
    description = "rejects every recipe in check()"

    def check(self, recipe, options):
        raise PefttoolError("method.strategy: picky needs a GPU; use lora")


class StrategiesPlugin:
    @pefttool.hookimpl
    def pefttool_register_strategies(self, register):
        register(BrokenWrap())
        register(PickyCheck())


@pytest.fixture
def test_strategies():
    host = get_plugin_host()
    host.register(StrategiesPlugin(), name="test-strategies")
    yield host
    host.unregister("test-strategies")


def test_an_error_inside_a_strategy_names_strategy_plugin_and_method(tmp_path, tiny_classifier_dir,
                                                                     test_strategies):
    path = write_tiny_recipe(tmp_path, tiny_classifier_dir, "brokenwrap")

    with pytest.raises(PluginError) as caught:
        run_recipe(load_recipe(path))

    assert str(caught.value) == ("strategy 'brokenwrap' (test-strategies) failed in wrap: "
                                 "KeyError: 'no module matched'")
    assert caught.value.exit_code == 2  # before training: bad input


def test_validate_runs_the_strategys_check(tmp_path, tiny_classifier_dir, test_strategies, capsys):
    path = write_tiny_recipe(tmp_path, tiny_classifier_dir, "picky")

    assert main(["validate", str(path)]) == 2
    assert "picky needs a GPU" in capsys.readouterr().err


def test_hook_wrappers_are_refused_with_one_line():
    class Wrapper:
        @pefttool.hookimpl(wrapper=True)
        def pefttool_log(self, event):
            return (yield)

    host = PluginHost()
    with pytest.raises(PluginError, match="implements pefttool_log as a hook wrapper"):
        host.register(Wrapper(), "wrapper")
    assert not host.pm.has_plugin("wrapper")


def test_a_strategy_filtered_out_by_the_env_var_says_so(tmp_path):
    host = PluginHost()
    host.load_entry_points("lora")

    with pytest.raises(LookupError, match="PEFTTOOL_PLUGINS left out plugin.*qlora"):
        host.strategy_for("qlora")


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


def test_sys_exit_at_plugin_import_is_a_named_import_failure(site):
    _install(site, "quitter", "import sys\nsys.exit(3)\n")

    with pytest.raises(PluginError, match=r"plugin 'quitter' \(pefttool_quitter_plugin\) failed to "
                                          r"import: SystemExit\(3\)"):
        PluginHost().load_entry_points()


def test_plugins_json_stays_json_when_a_plugin_prints(site, capsys, monkeypatch):
    _install(site, "chatty", "print('hello from chatty')\n")
    monkeypatch.setattr(plugins_module, "SLOW_IMPORT_S", 0.0)  # every import is "slow": warned

    assert main(["plugins", "--json"]) == 0

    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert "hello from chatty" in err and "hello" not in out
    assert "plugin 'chatty' took" in err  # the import-time warning names the plugin
    lora = next(r for r in rows if r["name"] == "lora")
    assert lora["hooks"] == ["pefttool_register_strategies"]
    assert lora["strategy_options"]["lora"]["properties"]["r"]["default"] == 8


def test_plugins_json_reports_a_bad_selection_as_a_json_error(site, capsys, monkeypatch):
    monkeypatch.setenv("PEFTTOOL_PLUGINS", "nonexistent")

    assert main(["plugins", "--json"]) == 2

    error = json.loads(capsys.readouterr().out)
    assert "nonexistent" in error["error"] and error["exit_code"] == 2


def test_debug_keeps_the_exit_code(site, capsys, monkeypatch):
    monkeypatch.setenv("PEFTTOOL_PLUGINS", "nonexistent")
    monkeypatch.setenv("PEFTTOOL_DEBUG", "1")

    assert main(["plugins"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_fire_still_names_the_plugin_for_plain_observers():
    class Noisy:
        @pefttool.hookimpl
        def pefttool_log(self, event):
            raise OSError("disk full")

    host = PluginHost()
    host.register(Noisy(), "noisy")
    with pytest.raises(ObserverError) as caught:
        host.fire("pefttool_log", event=LogEvent(level="info", message="x"))
    assert (caught.value.plugin, caught.value.hook) == ("noisy", "pefttool_log")


def test_trace_hooks_prints_plugin_hook_and_time(monkeypatch, capsys):
    class Quiet:
        @pefttool.hookimpl
        def pefttool_log(self, event):
            pass

    monkeypatch.setenv("PEFTTOOL_TRACE_HOOKS", "1")
    host = PluginHost()
    host.register(Quiet(), "quiet")
    host.fire("pefttool_log", event=LogEvent(level="info", message="x"))

    err = capsys.readouterr().err
    assert "[hook] pefttool_register_strategies" not in err
    assert err.startswith("[hook] pefttool_log → quiet: ") and err.rstrip().endswith(" ms")
