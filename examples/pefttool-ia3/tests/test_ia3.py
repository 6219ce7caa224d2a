"""The plugin's own tests: run them with `pytest` after `pip install -e .[test]`."""

from __future__ import annotations

from pefttool.testing import check_strategy


def test_ia3_trains_saves_and_reloads(tmp_path):
    result = check_strategy("ia3", tmp_path, lr=3e-2)
    assert (result.model_dir / "adapter_config.json").is_file()
