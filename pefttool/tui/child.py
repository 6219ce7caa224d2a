"""Training in a child process: launch it, watch its exit, stop it, read its stderr.

The TUI never trains in its own process: a crash or an out-of-memory kill in training must
not take the UI down, and a run must be able to outlive the UI. So the child is started in a
new session (Ctrl+C in the UI's terminal never reaches it, and it survives the UI quitting).
The run directory is chosen here and passed as `--set output.dir=...`, so the UI knows where
`events.jsonl` will appear even when the recipe's own `output.dir` contains `{time}`.

The engine refuses a run directory that is not empty, so the child's stdout/stderr first go
to a hidden file beside it (`runs_root/.RUN.stderr.log`); once the run has started (its
`events.jsonl` exists) the file is moved to `RUN_DIR/stderr.log`. The child keeps writing
to it through its open descriptor, so nothing is lost. A recipe the UI had to write out
(an adjusted one) is staged and moved in the same way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..events import EVENTS_FILE
from ..runfolder.rundir import STDERR_FILE
from .recipe_edit import free_path

EXIT_MEANINGS = {
    0: "done",
    1: "crashed (a bug in pefttool or a library)",
    2: "bad input: the recipe, data, model, plugin or output folder (see the message above)",
    3: "training failed (a NaN loss, say); the last good checkpoint is kept",
    129: "stopped by SIGHUP after a checkpoint; `pefttool resume RUN_DIR` continues it",
    130: "interrupted after a checkpoint; `pefttool resume RUN_DIR` continues it",
    143: "stopped by SIGTERM after a checkpoint; `pefttool resume RUN_DIR` continues it",
    137: "killed (SIGKILL), most often by the out-of-memory killer; try a smaller batch_size "
         "or max_length",
}


def default_command() -> list[str]:
    """The command that trains: `python -m pefttool.cli run` with the UI's own interpreter."""
    return [sys.executable, "-m", "pefttool.cli", "run"]


INTERRUPTED_CODES = (129, 130, 143)


def describe_exit(code: int | None, checkpointed: bool = True) -> str:
    """One line for a child's exit status (negative: killed by that signal); `checkpointed`:
    whether the run has a checkpoint to resume from (a run stopped while loading has none)."""
    if code is None:
        return "still running"
    if code in INTERRUPTED_CODES and not checkpointed:
        return "stopped before any checkpoint was written: nothing to resume; launch it again"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"killed by {name}, most often the out-of-memory killer; try a smaller " \
                   f"batch_size or max_length"
        return f"killed by {name}"
    return EXIT_MEANINGS.get(code, f"exited with status {code}")


def new_run_dir(runs_root: Path, name: str, now: float | None = None) -> Path:
    """A fresh, absolute `runs_root/NAME-YYYYmmdd-HHMMSS` (suffixed -2, -3… if taken)."""
    root = Path(runs_root).expanduser().resolve()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return free_path(root, f"{safe}-{stamp}", suffix="")


def tail(path: Path, lines: int = 20, max_bytes: int = 64_000) -> str:
    """The last `lines` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    # Progress bars redraw with \r; only the last state of each line is worth showing.
    rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]
    return "\n".join(rows[-lines:])


def stderr_path(run_dir: Path) -> Path:
    return Path(run_dir) / STDERR_FILE


def staged_path(run_dir: Path, suffix: str) -> Path:
    """Where a file for `run_dir` waits until the run has started: `.RUN<suffix>` beside it."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}{suffix}"


def find_stderr(run_dir: Path) -> Path:
    """The run's stderr.log, inside it or still staged beside it."""
    inside = stderr_path(run_dir)
    staged = staged_path(run_dir, ".stderr.log")
    return staged if not inside.exists() and staged.exists() else inside


@dataclass
class TrainingChild:
    """A `pefttool run` child process started by the UI."""

    process: subprocess.Popen
    run_dir: Path
    command: list[str]
    stderr_file: Path
    staged: dict[Path, Path] = field(default_factory=dict)   # staged file → its place in run_dir
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def start(
        cls,
        recipe_path: Path,
        run_dir: Path,
        overrides: list[str] | None = None,
        command: list[str] | None = None,
        cwd: Path | None = None,
    ) -> TrainingChild:
        """Launch training of `recipe_path` into `run_dir` (which must not exist yet)."""
        run_dir = Path(run_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        argv = [*(command or default_command()), str(recipe_path)]
        for text in [*(overrides or []), f"output.dir={json.dumps(str(run_dir))}"]:
            argv += ["--set", text]
        argv.append("--quiet")
        err_file = staged_path(run_dir, ".stderr.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(err_file, "ab") as err:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                cwd=cwd, env=env, start_new_session=True, close_fds=True,
            )
        staged = {err_file: stderr_path(run_dir)}
        if recipe_path == staged_path(run_dir, ".recipe.toml"):
            staged[recipe_path] = run_dir / "adjusted-recipe.toml"
        return cls(process=process, run_dir=run_dir, command=argv, stderr_file=err_file,
                   staged=staged)

    @classmethod
    def resume(cls, run_dir: Path, command: list[str], cwd: Path | None = None) -> TrainingChild:
        """Continue a stopped run (`pefttool resume RUN_DIR`); its output goes on in the run's
        own stderr.log."""
        from .run_actions import resume_command

        run_dir = Path(run_dir)
        argv = resume_command(command, run_dir)
        err_file = stderr_path(run_dir)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(err_file, "ab") as err:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                cwd=cwd, env=env, start_new_session=True, close_fds=True,
            )
        return cls(process=process, run_dir=run_dir, command=argv, stderr_file=err_file)

    def adopt_files(self) -> None:
        """Move staged files into the run directory once the run has started in it."""
        with self._lock:
            if not self.staged or not (self.run_dir / EVENTS_FILE).exists():
                return
            for source, target in list(self.staged.items()):
                try:
                    os.replace(source, target)
                except OSError:
                    continue
                if source == self.stderr_file:
                    self.stderr_file = target
                del self.staged[source]

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.process.poll()

    @property
    def running(self) -> bool:
        return self.poll() is None

    def stop(self) -> None:
        """Ask the run to stop: SIGINT makes the engine checkpoint, then exit with 130."""
        if self.running:
            os.kill(self.process.pid, signal.SIGINT)

    def stderr_tail(self, lines: int = 20) -> str:
        with self._lock:
            return tail(self.stderr_file, lines)
