"""The example plugins under examples/ are separate distributions: each is 'installed' into an
isolated site folder (its package plus a dist-info with its entry points, as pip would) and its
own test suite runs against it, training a recipe end to end on a tiny model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from plugin_pkg.sitedir import add_distribution

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def install_example(project: Path, site: Path) -> Path:
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    for package in meta["tool"]["setuptools"]["packages"]:
        shutil.copytree(project / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    return add_distribution(site, meta["project"]["name"], meta["project"]["version"],
                            meta["project"]["entry-points"]["pefttool"])


@pytest.mark.parametrize("example", ["pefttool-loraplus", "pefttool-ia3"])
def test_an_example_plugin_installs_and_passes_its_own_tests(example, tmp_path):
    site = install_example(EXAMPLES / example, tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    listed = subprocess.run([sys.executable, "-m", "pefttool.cli", "plugins"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert example.removeprefix("pefttool-") in listed.stdout

    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--rootdir", str(EXAMPLES / example), str(EXAMPLES / example / "tests")],
                            env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_new_plugin_scaffolds_a_package_that_passes_its_own_test(tmp_path):
    from pefttool.cli import main

    assert main(["new-plugin", "bitfit", "--dir", str(tmp_path)]) == 0
    project = tmp_path / "pefttool-bitfit"
    assert main(["new-plugin", "bitfit", "--dir", str(tmp_path)]) == 2  # never overwrites
    assert main(["new-plugin", "Bad-Name", "--dir", str(tmp_path)]) == 2

    site = install_example(project, tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--rootdir", str(project), str(project / "tests")],
                            env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
