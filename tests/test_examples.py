"""The example plugins under examples/ are separate distributions: each is 'installed' into a
site folder (its package plus a dist-info with its entry points, as pip would) and its own test
suite runs against it, training a recipe end to end on a tiny model. The examples and a freshly
scaffolded plugin (`pefttool new-plugin`) share one site folder and one pytest child: each
suite must pass with the other plugins installed beside it, as on a user's machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from plugin_pkg.sitedir import add_distribution

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SHIPPED = ["pefttool-loraplus", "pefttool-ia3", "pefttool-regression"]


def install_example(project: Path, site: Path) -> Path:
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    for package in meta["tool"]["setuptools"]["packages"]:
        shutil.copytree(project / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    return add_distribution(site, meta["project"]["name"], meta["project"]["version"],
                            meta["project"]["entry-points"]["pefttool"])


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Scaffold pefttool-bitfit (a strategy) and pefttool-sentiment (a task), install them and
    the shipped examples into one site folder, list
    the plugins, and run every project's own tests in one pytest child (one interpreter start
    instead of four). Returns what the tests below check."""
    from pefttool.cli import main

    root = tmp_path_factory.mktemp("examples")
    scaffolded = [main(["new-plugin", "bitfit", "--dir", str(root)])]
    scaffolded.append(main(["new-plugin", "bitfit", "--dir", str(root)]))  # never overwrites
    scaffolded.append(main(["new-plugin", "Bad-Name", "--dir", str(root)]))
    scaffolded.append(main(["new-plugin", "sentiment", "--task", "--dir", str(root)]))
    projects = {name: EXAMPLES / name for name in SHIPPED}
    for made in ("pefttool-bitfit", "pefttool-sentiment"):
        if (root / made).is_dir():
            projects[made] = root / made
    site = root / "site"
    for project in projects.values():
        install_example(project, site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    listed = subprocess.run([sys.executable, "-m", "pefttool.cli", "plugins"], env=env,
                            capture_output=True, text=True, timeout=120)
    junit = root / "junit.xml"
    work = root / "work"
    work.mkdir()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--rootdir", str(root), f"--junitxml={junit}",
                             *[str(p / "tests") for p in projects.values()]],
                            env=env, capture_output=True, text=True, timeout=600, cwd=work)
    owner = {test.stem: name for name, project in projects.items()
             for test in (project / "tests").glob("test_*.py")}
    outcomes: dict[str, dict[str, str]] = {}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = next((owner[part] for part in case.get("classname", "").split(".") if part in owner), "?")
            bad = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            outcomes.setdefault(name, {})[case.get("name")] = bad[0] if bad else "passed"
    return scaffolded, listed, result, outcomes


def _report(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.parametrize("example", SHIPPED)
def test_an_example_plugin_installs_and_passes_its_own_tests(example, installed):
    _, listed, result, outcomes = installed
    assert listed.returncode == 0, listed.stderr
    assert example.removeprefix("pefttool-") in listed.stdout
    mine = outcomes.get(example, {})
    assert mine, f"no test of {example} ran\n" + _report(result)
    assert set(mine.values()) == {"passed"}, f"{mine}\n" + _report(result)
    assert " passed" in result.stdout


def test_the_task_example_is_listed_as_a_task_beside_the_built_in_ones(installed):
    """`pefttool plugins` with the regression example installed: its task sits beside the
    two built-in tasks, each named as a task."""
    _, listed, _, _ = installed
    for task in ("classification", "causal-lm", "regression"):
        assert f"{task} (task):" in listed.stdout, listed.stdout


def test_new_plugin_scaffolds_a_package_that_passes_its_own_test(installed):
    scaffolded, listed, result, outcomes = installed
    assert scaffolded == [0, 2, 2, 0]  # made; never overwrites; a bad name is refused; a task
    assert "bitfit" in listed.stdout and "sentiment (task):" in listed.stdout
    for made in ("pefttool-bitfit", "pefttool-sentiment"):
        assert outcomes.get(made) and list(outcomes[made].values()) == ["passed"], \
            f"{made}: {outcomes.get(made)}\n" + _report(result)
    assert "?" not in outcomes, f"{outcomes['?']}\n" + _report(result)  # none unaccounted for
