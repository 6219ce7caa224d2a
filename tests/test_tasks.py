"""What a task.type means lives in one task object: model class, PEFT task type, evaluation and
its metric table. A new metric (AUROC here) is one table entry, and a recipe can choose it."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from pefttool.errors import DataError
from pefttool.metrics import auroc
from pefttool.recipe import load_recipe
from pefttool.tasks import all_metric_names, get_task, registered
from tiny_models import write_tiny_recipe


def test_the_built_in_tasks_are_registered_by_their_plugins():
    tasks = registered()
    assert {"classification", "causal-lm"} <= set(tasks)
    assert tasks["classification"].plugin == "classification"
    assert tasks["causal-lm"].plugin == "causal-lm"
    for name, task in tasks.items():
        assert get_task(name) is task and task.type == name
        assert task.default_metric in task.selectable_metrics()
    with pytest.raises(ValueError, match="task.type: 'seq2seq' is not a task"):
        get_task("seq2seq")


def test_each_task_names_a_real_model_class_and_peft_task_type():
    import transformers
    from peft import TaskType

    assert get_task("classification").auto_model_class() is transformers.AutoModelForSequenceClassification
    assert get_task("causal-lm").auto_model_class() is transformers.AutoModelForCausalLM
    assert get_task("classification").peft_type() is TaskType.SEQ_CLS
    assert get_task("causal-lm").peft_type() is TaskType.CAUSAL_LM


def test_eval_metric_accepts_exactly_the_selectable_metrics_of_the_tables():
    assert {"accuracy", "macro_f1", "auroc", "eval_loss", "perplexity",
            "exact_match"} <= set(all_metric_names())


def test_a_metrics_direction_comes_from_its_task_table(tmp_path, tiny_classifier_dir, monkeypatch):
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                                           overrides={"eval.metric": "auroc"}))
    assert recipe.metric == "auroc" and recipe.higher_is_better

    classification = get_task("classification")
    flipped = dataclasses.replace(classification.metrics["auroc"], higher_is_better=False)
    monkeypatch.setitem(classification.metrics, "auroc", flipped)
    assert not recipe.higher_is_better


def test_auroc_is_the_share_of_positive_negative_pairs_ranked_right():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)  # sklearn's example
    assert auroc([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0
    assert auroc([0.9, 0.2, 0.1], [0, 0, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5   # ties count half
    assert auroc([0.3, 0.6], [1, 1]) is None                  # one class: undefined
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 30)
        labels = [rng.randint(0, 1) for _ in range(n)]
        scores = [rng.choice([0.1, 0.2, 0.5, 0.7, 0.9]) for _ in range(n)]  # many ties
        pairs = [(p, q) for p, q in itertools.product(range(n), repeat=2)
                 if labels[p] == 1 and labels[q] == 0]
        if not pairs:
            assert auroc(scores, labels) is None
            continue
        expected = sum(1.0 if scores[p] > scores[q] else 0.5 if scores[p] == scores[q] else 0.0
                       for p, q in pairs) / len(pairs)
        assert auroc(scores, labels) == pytest.approx(expected)


def test_auroc_needs_a_binary_task(tmp_path, tiny_classifier_dir):
    from pefttool import RecipeError

    path = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "eval.metric": "auroc", "task.labels": ["negative", "positive", "mixed"]})
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert any(p.startswith("eval.metric: 'auroc' needs a binary task and task.labels has 3")
               for p in caught.value.problems)


def test_auroc_refuses_an_eval_set_without_both_labels(tmp_path, tiny_classifier_dir):
    from types import SimpleNamespace

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                                           overrides={"eval.metric": "auroc"}))
    data = SimpleNamespace(label_names=["negative", "positive"],
                           stats={"eval": {"label_counts": {"negative": 12, "positive": 0}}})
    with pytest.raises(DataError, match="no row of 'positive'"):
        get_task("classification").check_data(recipe, data)


def test_a_binary_classifier_run_reports_and_early_stops_on_auroc(tmp_path, tiny_classifier_dir):
    from pefttool.engine import run_recipe
    from pefttool.events import EvalEvent, read_events

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
        "eval.metric": "auroc", "train.epochs": 2, "train.lr": 2e-2}))
    result = run_recipe(recipe)

    evals = [e for e in read_events(result.run_dir / "events.jsonl") if isinstance(e, EvalEvent)]
    assert set(evals[-1].metrics) == {"accuracy", "macro_f1", "auroc", "eval_loss"}
    assert all(e.metric == "auroc" and e.value == e.metrics["auroc"] for e in evals)
    assert all(0.0 <= e.metrics["auroc"] <= 1.0 for e in evals)
    assert result.best == max(e.metrics["auroc"] for e in evals if not e.before)


@pytest.mark.parametrize("task, fmt, rows", [("classification", None, "LabelledRows"),
                                             ("causal-lm", "instruction", "InstructionRows"),
                                             ("causal-lm", "text", "TextRows"),
                                             ("causal-lm", "chat", "ChatRows")])
def test_the_task_tells_the_data_package_which_rows_it_reads(tmp_path, request, task, fmt, rows):
    from pefttool.data import formats

    model = request.getfixturevalue("tiny_classifier_dir" if task == "classification"
                                    else "tiny_causal_dir")
    overrides = {"task.format": fmt} if fmt else {}
    recipe = load_recipe(write_tiny_recipe(tmp_path, model, "lora", task, overrides=overrides))
    assert type(get_task(recipe).row_format(recipe)) is getattr(formats, rows)


def test_task_type_format_and_options_are_checked_against_the_registered_task():
    from pefttool import RecipeError, validate_recipe

    def problems(task: dict) -> list[str]:
        data = {"model": {"path": "m"}, "task": task, "data": {"train": "t.csv"}}
        with pytest.raises(RecipeError) as exc:
            validate_recipe(data, check_files=False)
        return exc.value.problems

    typo = problems({"type": "clasification"})
    assert typo[0].startswith("task.type: no task named 'clasification'")
    assert "did you mean 'classification'" in typo[0] and "loaded: causal-lm, classification" in typo[0]
    assert problems({"type": "causal-lm", "format": "chatt"})[0].startswith(
        "task.format: 'chatt' is not a format of task 'causal-lm'")
    assert any(p.startswith("task.lables: unknown key") and "labels" in p
               for p in problems({"type": "classification", "lables": ["a", "b"]}))


def test_a_task_plugins_failure_or_wrong_answer_is_one_line_naming_it():
    """The core calls a task through GuardedTask (as strategies through GuardedStrategy): an
    exception or a result of the wrong kind from a method the plugin answers is one line naming
    the task, its plugin and the method (exit 2 before training, 3 in it), never 'internal
    error'; pefttool's own defaults and a PefttoolError pass through untouched."""
    import torch

    from pefttool.errors import PluginError
    from pefttool.tasks import Prediction
    from pefttool.tasks.guard import GuardedTask

    classification = type(registered()["classification"].task)

    class Broken(classification):
        type = "broken"

        def evaluate(self, *args):
            return {"accuracy": float("nan")}

        def model_kwargs(self, recipe):
            return None

        def row_format(self, recipe):
            raise KeyError("label_column")

        def check_data(self, recipe, data):
            raise DataError("data: the plugin's own words")

        def predictions(self, logits, labels, recipe):
            return [Prediction("1", {})]   # one answer for two rows

    task = Broken()
    task.plugin = "pefttool-broken"
    guarded = GuardedTask(task)
    with pytest.raises(PluginError) as raised:
        guarded.evaluate(None, None, None, None, None, None)
    assert str(raised.value) == ("task 'broken' (pefttool-broken) returned a dict whose 'accuracy' is "
                                 "nan from evaluate: return a dict of metric name → number (no NaN)")
    assert raised.value.exit_code == 3
    with pytest.raises(PluginError, match=r"^task 'broken' \(pefttool-broken\) returned None from "
                                          r"model_kwargs: return a dict") as raised:
        guarded.model_kwargs(None)
    assert raised.value.exit_code == 2
    with pytest.raises(PluginError, match=r"^task 'broken' \(pefttool-broken\) failed in row_format: "
                                          r"KeyError: 'label_column'$"):
        guarded.row_format(None)
    with pytest.raises(DataError, match="the plugin's own words"):
        guarded.check_data(None, None)
    with pytest.raises(PluginError, match=r"returned a list of 1 from predictions for 2 rows"):
        guarded.predictions(torch.zeros(2, 2), ["a", "b"], None)
    # pefttool's defaults and plain attributes come through as they are
    assert guarded.has_prompts(None) is False and guarded.type == "broken"
    assert guarded.selectable_metrics() == task.selectable_metrics()
    # the registered built-ins are guarded the same way
    assert isinstance(registered()["causal-lm"], GuardedTask)


def test_a_task_may_compute_the_training_loss_and_collate_its_own_batches(tmp_path, tiny_classifier_dir):
    """Task.training_loss replaces the model's own loss in the training loop, and the row
    format's collator makes the batches it reads; a loss without grad from it is one line
    naming the task and its plugin (exit 3: it happens in training)."""
    from pefttool.data.collate import Collator
    from pefttool.data.formats import LabelledRows
    from pefttool.engine import run_recipe
    from pefttool.errors import PluginError
    from pefttool.events import StepEvent, read_events
    from pefttool.hookspecs import hookimpl
    from pefttool.plugins import get_plugin_host

    classification = type(registered()["classification"].task)
    returned: list[float] = []
    collated: list[set[str]] = []

    class MarkedCollator(Collator):
        def __call__(self, rows):
            batch = super().__call__(rows)
            batch["row_weight"] = batch["labels"].float() + 1.0   # positive rows count twice
            collated.append(set(batch))
            return batch

    class WeightedRows(LabelledRows):
        def collator(self, pad_id):
            return MarkedCollator(pad_id=pad_id, sequence_labels=False)

    class Weighted(classification):
        type = "weighted"
        detach = False

        def row_format(self, recipe):
            return WeightedRows.from_recipe(recipe)

        def training_loss(self, model, batch, recipe):
            import torch

            weight = batch.pop("row_weight")
            out = model(**batch)
            per_row = torch.nn.functional.cross_entropy(out.logits, batch["labels"], reduction="none")
            loss = (per_row * weight).sum() / weight.sum()
            returned.append(loss.item())
            return loss.detach() if self.detach else loss

    task = Weighted()

    class Plugin:
        @hookimpl
        def pefttool_register_tasks(self, register):
            register(task)

    host = get_plugin_host()
    host.register(Plugin(), "pefttool-weighted")
    try:
        recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", overrides={
            "task.type": "weighted", "train.epochs": 1, "train.log_every": 1}))
        result = run_recipe(recipe)
        steps = [e for e in read_events(result.run_dir / "events.jsonl") if isinstance(e, StepEvent)]
        assert result.status == "completed" and len(steps) == len(returned) > 0
        assert [round(e.loss, 5) for e in steps] == [round(v, 5) for v in returned]
        assert all("row_weight" in keys for keys in collated)

        task.detach = True
        recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora", name="detached",
                                               overrides={"task.type": "weighted", "train.epochs": 1}))
        with pytest.raises(PluginError) as raised:
            run_recipe(recipe)
        assert str(raised.value).startswith(
            "task 'weighted' (pefttool-weighted) returned a loss without grad from training_loss")
        assert raised.value.exit_code == 3 and "\n" not in str(raised.value)
    finally:
        host.unregister("pefttool-weighted")
