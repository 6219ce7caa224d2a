"""The plugin's own tests: run them with `pytest` after `pip install -e .[test]`."""

from __future__ import annotations

import pytest

from pefttool.plugins import get_plugin_host
from pefttool.testing import check_strategy, tiny_recipe


def test_loraplus_trains_saves_and_reloads(tmp_path):
    # B learns 16x faster: a base rate of 2e-3 keeps that stable on the tiny model
    result = check_strategy("loraplus", tmp_path, options={"r": 4, "lr_ratio": 16.0}, lr=2e-3)
    assert (result.model_dir / "adapter_config.json").is_file()


def test_b_matrices_get_lr_ratio_times_the_learning_rate(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from pefttool import load_recipe

    recipe = load_recipe(tiny_recipe("loraplus", tmp_path, {"lr_ratio": 8.0}, lr=1e-3))
    strategy = get_plugin_host().strategies["loraplus"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tiny-model")
    model = strategy.wrap(model, recipe, recipe.strategy_options)
    groups = strategy.param_groups(model, recipe, recipe.strategy_options)
    b_ids = {id(p) for n, p in model.named_parameters() if "lora_B" in n}
    (b_group,) = [g for g in groups if g["params"] and id(g["params"][0]) in b_ids]
    assert b_group["lr"] == pytest.approx(8e-3) and len(b_group["params"]) == len(b_ids)
    covered = sum(len(g["params"]) for g in groups)
    assert covered == sum(1 for p in model.parameters() if p.requires_grad)
