"""`pefttool new-plugin NAME`: a plugin distribution that passes its own test out of the box.

It writes `pefttool-NAME/` with a pyproject (the `pefttool` entry point), a strategy with an
options model (BitFit: train only biases, and the task head), and a test using
`pefttool.testing.check_strategy`. Nothing existing is overwritten.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import OutputError, PefttoolError

NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")

PYPROJECT = '''[project]
name = "pefttool-{dash}"
version = "0.1.0"
description = "A pefttool strategy plugin: {name}"
requires-python = ">=3.11"
dependencies = ["pefttool"]

[project.entry-points.pefttool]
{name} = "pefttool_{name}"

[project.optional-dependencies]
test = ["pytest"]

[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[tool.setuptools]
packages = ["pefttool_{name}"]
'''

MODULE = '''"""Strategy `{name}`: BitFit (train only the biases, and the task head). Change `wrap` to
your method; see docs/plugins.md in pefttool for the whole strategy contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import Field

from pefttool import Strategy, StrategyOptions, hookimpl

if TYPE_CHECKING:  # only for the annotations: importing the plugin must stay light (no torch)
    import torch

    from pefttool import Recipe

HEADS = ("classifier", "score")


class {cls}Options(StrategyOptions):
    """The recipe's `[method]` keys for `{name}` (each description shows in `pefttool plugins`)."""

    train_head: bool = Field(True, description="also train the task head in full")


class {cls}Strategy(Strategy):
    """BitFit: `wrap` leaves only the biases (and the head) trainable; `save` is the default
    (the full model)."""

    name = "{name}"
    description = "BitFit: only biases (and the head) train"
    Options = {cls}Options

    def wrap(self, model: torch.nn.Module, recipe: Recipe, options: {cls}Options) -> torch.nn.Module:
        """Strategy contract, called once after loading: returns the model to train."""
        for param_name, param in model.named_parameters():
            head = options.train_head and param_name.startswith(HEADS)
            param.requires_grad = param_name.endswith(".bias") or head
        return model


@hookimpl
def pefttool_register_strategies(register: Callable[[Strategy], None]) -> None:
    """Hook `pefttool_register_strategies` (once, at start-up): registers `{name}`."""
    register({cls}Strategy())
'''

TEST = '''from pefttool.testing import check_strategy


def test_{name}_trains_saves_and_reloads(tmp_path):
    check_strategy("{name}", tmp_path, options={{"train_head": True}}, lr=1e-2)
'''


def new_plugin(name: str, parent: Path) -> Path:
    """Write the plugin project `parent/pefttool-NAME`; return its folder."""
    if not NAME.match(name):
        raise PefttoolError(f"new-plugin: '{name}' is not a usable plugin name; use lower-case "
                            f"letters, digits and '_', starting with a letter (e.g. bitfit)")
    root = Path(parent) / f"pefttool-{name.replace('_', '-')}"
    if root.exists():
        raise OutputError(f"new-plugin: {root} already exists; choose another name or folder")
    cls = "".join(part.capitalize() for part in name.split("_"))
    files = {
        "pyproject.toml": PYPROJECT.format(name=name, dash=name.replace("_", "-")),
        f"pefttool_{name}/__init__.py": MODULE.format(name=name, cls=cls),
        f"tests/test_{name}.py": TEST.format(name=name),
        "README.md": f"# pefttool-{name}\n\n`pip install -e .[test] && pytest`\n",
    }
    try:
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"new-plugin: cannot write {root} ({exc.strerror})") from exc
    return root
