"""pefttool.testing: the one-line check a plugin author puts in their own pytest."""

from __future__ import annotations

import pytest

import pefttool
from pefttool import Strategy
from pefttool.plugins import get_plugin_host
from pefttool.testing import check_strategy


def test_check_strategy_passes_for_the_built_in_lora(tmp_path):
    result = check_strategy("lora", tmp_path, options={"r": 4})
    assert (result.model_dir / "adapter_config.json").is_file()


class ForgetfulSave(Strategy):
    """Trains everything but saves the untrained base: the helper must catch it."""

    name = "forgetful"

    def save(self, model, out_dir, recipe, options):
        import shutil

        for f in (recipe.resolve_path(recipe.model.path)).iterdir():
            shutil.copy(f, out_dir / f.name)


class ForgetfulPlugin:
    @pefttool.hookimpl
    def pefttool_register_strategies(self, register):
        register(ForgetfulSave())


def test_check_strategy_catches_a_save_that_loses_the_training(tmp_path):
    host = get_plugin_host()
    host.register(ForgetfulPlugin(), name="forgetful-plugin")
    try:
        with pytest.raises(AssertionError, match="save\\(\\) lost the training"):
            check_strategy("forgetful", tmp_path, lr=1e-3)
    finally:
        host.unregister("forgetful-plugin")
