"""What a third-party plugin author meets when their plugin fails, and the plumbing they use:
observer failures mid-run (checkpointed, exit 3, resumable, or only a warning), strategy
exceptions named with the plugin, strategy checks in `validate`, run_end failures reported,
wrapper hooks, per-plugin settings, hook tracing."""

from __future__ import annotations

import pytest

import pefttool
from fault_helpers import events_of, metrics_of, of_type
from pefttool.runfolder.checkpoints import list_checkpoints
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


# ------------------------------------------------------------------ what a strategy returns


class _Lora(LoraStrategy):
    """LoRA with one method broken in the way the test names."""

    Options = LoraStrategy.Options

    def __init__(self, name, **methods):
        self.name = name
        for method, fn in methods.items():
            setattr(self, method, fn)


def _frozen_loss(outputs, batch, recipe, options):
    return outputs.loss.detach()


MISTAKES = {
    "wrap returns None": (dict(wrap=lambda model, recipe, options: None),
                          "returned None from wrap: return the model to train"),
    "prepare_batch returns None": (dict(prepare_batch=lambda batch, recipe, options: None),
                                   "returned None from prepare_batch: return the batch"),
    "compute_loss without grad": (dict(compute_loss=_frozen_loss),
                                  "returned a loss without grad from compute_loss"),
    "compute_loss not a scalar": (dict(compute_loss=lambda outputs, batch, r, o: outputs.logits.sum(-1)),
                                  "returned a loss of shape (8,) from compute_loss"),
    "param_groups not a list": (dict(param_groups=lambda model, recipe, options: "all"),
                                "returned a str from param_groups"),
    "make_optimizer returns a dict": (dict(make_optimizer=lambda groups, recipe, options: {}),
                                      "returned a dict from make_optimizer"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_strategy_returning_the_wrong_thing_is_one_line_naming_it(mistake, capsys, registered,
                                                                     tmp_path, tiny_classifier_dir):
    methods, needle = MISTAKES[mistake]
    name = "broken_" + mistake.split()[0]

    class Plugin:
        @pefttool.hookimpl
        def pefttool_register_strategies(self, register):
            register(_Lora(name, **methods))

    registered(Plugin(), "pefttool-broken")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, name, overrides={
        "train.max_steps": 2, "eval.before_training": False, "method.r": 4})
    rc, out, err = cli(capsys, "run", recipe)
    in_training = methods.keys() & {"prepare_batch", "compute_loss"}   # 3: failed while training
    assert_clean_failure(rc, out, err, f"strategy '{name}' (pefttool-broken) {needle}",
                         code=3 if in_training else 2)
    assert "BertFor" not in err and "internal error" not in err   # never a model's repr


def _groups_without_the_head(model, recipe, options):
    return [{"params": [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]}]


def _groups_twice(model, recipe, options):
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": params}, {"params": params[:1]}]


@pytest.mark.parametrize("groups, needle", [
    (_groups_without_the_head, "left 2 trainable parameter(s) out of param_groups"),
    (_groups_twice, "put 1 parameter(s) in more than one group from param_groups"),
])
def test_param_groups_must_cover_every_trainable_parameter_once(groups, needle, capsys, registered,
                                                                tmp_path, tiny_classifier_dir):
    class Plugin:
        @pefttool.hookimpl
        def pefttool_register_strategies(self, register):
            register(_Lora("grouped", param_groups=groups))

    registered(Plugin(), "pefttool-grouped")
    recipe = write_tiny_recipe(tmp_path, tiny_classifier_dir, "grouped", overrides={
        "train.max_steps": 1, "method.r": 4})
    rc, out, err = cli(capsys, "run", recipe)
    assert_clean_failure(rc, out, err, f"strategy 'grouped' (pefttool-grouped) {needle}")
    assert "classifier" in err or "lora_A" in err   # the left-out or doubled names are shown


def test_step_events_report_the_schedule_of_train_lr_and_each_groups_rate(registered, tmp_path,
                                                                          tiny_classifier_dir):
    from pefttool.engine import run_recipe
    from pefttool.recipe import load_recipe

    def groups(model, recipe, options):  # group 0 at a tenth of the rate, as for embeddings
        lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        rest = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
        return [{"params": lora, "lr": recipe.train.lr / 10}, {"params": rest}]

    class Plugin:
        @pefttool.hookimpl
        def pefttool_register_strategies(self, register):
            register(_Lora("tenth", param_groups=groups))

    registered(Plugin(), "pefttool-tenth")
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "tenth", overrides={
        "train.max_steps": 4, "train.lr": 5e-3, "train.scheduler": "constant",
        "eval.before_training": False, "method.r": 4}))
    steps = of_type(events_of(run_recipe(recipe).run_dir), "step")
    assert [e.lr for e in steps] == pytest.approx([5e-3] * 4)
    assert steps[-1].lrs == pytest.approx([5e-4, 5e-3])
