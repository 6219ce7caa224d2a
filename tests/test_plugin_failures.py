"""What a third-party plugin author meets when their plugin fails, and the plumbing they use:
observer failures mid-run (checkpointed, exit 3, resumable, or only a warning), strategy
exceptions named with the plugin, strategy checks in `validate`, run_end failures reported,
wrapper hooks, per-plugin settings, hook tracing."""

from __future__ import annotations

import pytest

import pefttool
from fault_helpers import events_of, metrics_of, of_type
from pefttool.checkpoints import list_checkpoints
from pefttool.plugins import get_plugin_host
from pefttool.strategy import Strategy, StrategyOptions
from pefttool_lora import LoraStrategy
from pydantic import BaseModel
from test_faults import assert_clean_failure, cli
from tiny_models import write_tiny_recipe


@pytest.fixture
def registered():
    """registered(obj, name): a plugin for this test only."""
    host = get_plugin_host()
    names = []

    def add(obj, name):
        host.register(obj, name)
        names.append(name)

    yield add
    for name in names:
        host.unregister(name)


class FailsAtStep:
    def __init__(self, step: int):
        self.step = step

    @pefttool.hookimpl
    def pefttool_step_end(self, event):
        if event.step == self.step:
            raise RuntimeError("dashboard unreachable")


def test_an_observer_failing_mid_run_checkpoints_and_the_run_resumes(capsys, registered, tmp_path,
                                                                      tiny_classifier_dir):
    registered(FailsAtStep(3), "flaky")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "plugin 'flaky' raised in pefttool_step_end",
                         "the run is saved at step 3", code=3)
    run_dir = tmp_path / "runs" / "recipe"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-0000003"]
    get_plugin_host().unregister("flaky")
    rc, out, err = cli(capsys, "resume", run_dir)
    assert rc == 0, err
    assert "resumed from step-0000003" in out and metrics_of(run_dir)["steps"] == 12


def test_on_error_warn_downgrades_an_observer_failure(capsys, registered, tmp_path, tiny_classifier_dir):
    registered(FailsAtStep(3), "flaky")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                               overrides={"plugins.on_error": "warn"})
    rc, out, err = cli(capsys, "run", recipe)
    assert rc == 0, err
    assert "warning: plugin 'flaky' raised in pefttool_step_end" in out
    assert metrics_of(tmp_path / "runs" / "recipe")["status"] == "completed"


def test_debug_mode_keeps_the_exit_code(capsys, monkeypatch, registered, tmp_path, tiny_classifier_dir):
    registered(FailsAtStep(2), "flaky")
    monkeypatch.setenv("PEFTTOOL_DEBUG", "1")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora")
    rc, out, err = cli(capsys, "run", recipe)
    assert rc == 3  # training failed, as without PEFTTOOL_DEBUG
    assert "Traceback" in err and "PluginFailedDuringTraining" in err


class ExplodingStrategy(LoraStrategy):
    name = "exploding"

    def wrap(self, model, recipe, options):
        raise KeyError("no module named 'q_proj'")


def test_an_exception_in_a_strategy_names_the_strategy_and_its_plugin(capsys, registered, tmp_path,
                                                                      tiny_classifier_dir):
    class Plugin:
        @pefttool.hookimpl
        def pefttool_register_strategies(self, register):
            register(ExplodingStrategy())

    registered(Plugin(), "pefttool-exploding")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "exploding")
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, "strategy 'exploding' (pefttool-exploding) failed in wrap: "
                         "KeyError")


class PickyStrategy(Strategy):
    name = "picky"

    def check(self, recipe, options):
        raise pefttool.PefttoolError("method.strategy: picky needs a GPU; use lora here")


def test_validate_runs_the_strategys_check(capsys, registered, tmp_path, tiny_classifier_dir):
    class Plugin:
        @pefttool.hookimpl
        def pefttool_register_strategies(self, register):
            register(PickyStrategy())

    registered(Plugin(), "picky-plugin")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "picky")
    rc, out, err = cli(capsys, "validate", recipe)
    assert_clean_failure(rc, out, err, "picky needs a GPU")


def test_a_failure_in_run_end_is_reported_after_the_outcome(capsys, registered, tmp_path,
                                                            tiny_classifier_dir):
    class EndBoom:
        @pefttool.hookimpl
        def pefttool_run_end(self, event):
            raise ValueError("upload failed")

    registered(EndBoom(), "uploader")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={"train.max_steps": 2})
    rc, out, err = cli(capsys, "run", recipe)
    assert rc == 0  # the run itself completed
    assert "completed after 2 steps" in out
    assert err.strip() == "warning: plugin 'uploader' raised in pefttool_run_end: ValueError: upload failed"


def test_wrapper_hooks_are_called(registered, tmp_path, tiny_classifier_dir):
    seen = []

    class Wrapper:
        @pefttool.hookimpl(wrapper=True)
        def pefttool_eval_end(self, event):
            seen.append(("before", event.step))
            result = yield
            seen.append(("after", event.step))
            return result

    registered(Wrapper(), "wrapper")
    from pefttool.engine import run_recipe
    from pefttool.recipe import load_recipe

    run_recipe(load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                                             overrides={"train.max_steps": 1})))
    assert seen[:2] == [("before", 0), ("after", 0)]


class Thresholds(BaseModel):
    model_config = {"extra": "forbid", "strict": True}
    min_accuracy: float = 0.5


def test_plugin_settings_are_validated_by_the_plugins_own_model(capsys, registered, tmp_path,
                                                                tiny_classifier_dir):
    class Alerts:
        PluginOptions = Thresholds

        @pefttool.hookimpl
        def pefttool_log(self, event):
            pass

    registered(Alerts(), "alerts")
    good = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                             overrides={"plugins.alerts": {"min_accuracy": 0.7}})
    assert cli(capsys, "validate", good)[0] == 0
    bad = write_tiny_recipe(tmp_path / "b", tiny_classifier_dir, "lora",
                            overrides={"plugins.alerts": {"min_acuracy": 0.7},
                                       "plugins.nobody": {"x": 1}})
    rc, out, err = cli(capsys, "validate", bad)
    assert_clean_failure(rc, out, err, "plugins.alerts.min_acuracy: unknown key (did you mean "
                         "'min_accuracy'?)", "plugins.nobody: no plugin named 'nobody' is loaded",
                         lines=3)


def test_trace_hooks_prints_each_call_with_its_time(capsys, monkeypatch, registered):
    from pefttool.events import LogEvent

    class Quiet:
        @pefttool.hookimpl
        def pefttool_log(self, event):
            pass

    registered(Quiet(), "quiet")
    monkeypatch.setenv("PEFTTOOL_TRACE_HOOKS", "1")
    get_plugin_host().fire("pefttool_log", event=LogEvent(level="info", message="x"))
    err = capsys.readouterr().err
    assert "[hook] pefttool_log → quiet:" in err and " ms" in err
