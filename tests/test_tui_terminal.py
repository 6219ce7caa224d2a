"""The TUI in a real terminal: tmux runs `pefttool`, keys go in, the pane is read back.

Skipped (saying why) when tmux is missing; `make tools` installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pefttool.catalog import find_recipes
from test_tui_support import write_canned_run
from tiny_models import write_tiny_recipe

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (make tools installs it)")


class Terminal:
    """A 100×30 tmux pane on a private tmux server (other tmux sessions are not touched)."""

    def __init__(self, command: str, cwd: Path):
        self.socket = f"pefttool-test-{os.getpid()}-{time.monotonic_ns()}"
        env = dict(os.environ, OMP_NUM_THREADS="1", TERM="xterm-256color")
        self._tmux("new-session", "-d", "-s", "tui", "-x", "100", "-y", "30", "-c", str(cwd),
                   command, env=env)

    def _tmux(self, *args: str, env: dict | None = None) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              env=env, timeout=30).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "tui")

    def keys(self, *keys: str) -> None:
        for key in keys:
            self._tmux("send-keys", "-t", "tui", key)
            time.sleep(0.15)

    def wait_for(self, *texts: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if all(text in shown for text in texts):
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {texts}; the pane shows:\n{shown}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return "tui" in self._tmux("list-sessions", "-F", "#{session_name}")

    def close(self) -> None:
        self._tmux("kill-server")


def pefttool_command() -> str:
    script = Path(sys.executable).with_name("pefttool")
    return str(script) if script.exists() else f"{sys.executable} -m pefttool.cli"


def test_pefttool_in_a_terminal_shows_recipes_then_runs_and_dashboards(tmp_path, tiny_classifier_dir):
    write_canned_run(tmp_path / "runs", "lora-20250101-000000")
    write_tiny_recipe(tmp_path, tiny_classifier_dir, name="tiny")
    tiny_row = [e.name for e in find_recipes(tmp_path, validate=False)].index("tiny")
    term = Terminal(pefttool_command(), tmp_path)
    try:
        term.wait_for("Recipes", "lora", "tiny", "Launch", timeout=60)

        term.keys("2")                               # Runs: the canned run, then its dashboard
        term.wait_for("1 run in runs · newest first", "lora-20250101-000000", "completed")
        term.keys("Enter")
        term.wait_for("COMPLETED", "step 60/60", "evaluations", "train loss")

        term.keys("Escape", "1")
        term.wait_for("Adjust", "l Launch")                # the recipe list, its table focused
        term.keys(*["Down"] * tiny_row, "l", "y")          # launch the tiny recipe (confirmed), live
        shown = term.wait_for("COMPLETED", "tiny", "100%", "evaluations", "exited with status 0",
                              timeout=120)
        assert "RUNNING" not in shown and "training stopped" not in shown

        term.keys("q")                               # the run is over: quits without asking
        deadline = time.monotonic() + 15
        while term.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not term.alive(), term.screen()
    finally:
        term.close()
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert any(name.startswith("tiny-") for name in runs), runs
