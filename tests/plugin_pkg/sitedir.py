"""Lay out a directory that looks like site-packages with plugin distributions installed in it.

Putting it on `sys.path` (or `PYTHONPATH` for a subprocess) makes `importlib.metadata` find
the distributions and their `pefttool` entry points, exactly as after `pip install`, without
touching the shared virtual environment.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

DEMO_PROJECT = Path(__file__).resolve().parent


def add_distribution(site: Path, dist: str, version: str, entry_points: dict[str, str],
                     modules: dict[str, str] | None = None) -> Path:
    """Write `DIST-VERSION.dist-info` (METADATA, entry_points.txt) and the given modules
    (`{"module_name": "source"}`) into `site`; return `site`."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[pefttool]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in (modules or {}).items():
        (site / f"{module}.py").write_text(source)
    return site


def install_demo_plugin(site: Path) -> Path:
    """'Install' the demo plugin project (this folder) into `site`, as its pyproject says."""
    project = tomllib.loads((DEMO_PROJECT / "pyproject.toml").read_text())["project"]
    for package in ("pefttool_demo_plugin",):
        shutil.copytree(DEMO_PROJECT / package, site / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return add_distribution(site, project["name"], project["version"],
                            project["entry-points"]["pefttool"])
