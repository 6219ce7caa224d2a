"""Helpers for the fault tests (resume, signals, bad input): start `pefttool` as a real child
process, watch its events.jsonl, and compare the results of two runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pefttool.events import Event, EventFollower, read_events

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a `pefttool` child: one thread, no hub, plain progress lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEFTTOOL_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               TOKENIZERS_PARALLELISM="false", PEFTTOOL_PROGRESS_SECONDS="0")
    env.update(extra)
    return env


def pefttool_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pefttool.cli", *[str(a) for a in args]]


def run_pefttool(*args: str, cwd: Path, timeout: float = 180, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None,
                 python_code: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pefttool.cli ARGS` (or `python -c CODE ARGS`) to the end."""
    cmd = pefttool_cmd(*args) if python_code is None else [sys.executable, "-c", python_code,
                                                            *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=cwd, env=env or child_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec_fn)


def start_pefttool(*args: str, cwd: Path, env: dict[str, str] | None = None,
                   python_code: str | None = None) -> subprocess.Popen:
    cmd = pefttool_cmd(*args) if python_code is None else [sys.executable, "-c", python_code,
                                                            *[str(a) for a in args]]
    return subprocess.Popen(cmd, cwd=cwd, env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_events(proc: subprocess.Popen, run_dir: Path, done: Callable[[list[Event]], bool],
                    timeout: float = 120.0, poll: float = 0.005) -> list[Event]:
    """Follow RUN_DIR/events.jsonl until `done(events so far)`; fail if the child exits first."""
    follower = EventFollower(Path(run_dir) / "events.jsonl")
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += follower.poll()
        if done(events):
            return events
        if proc.poll() is not None:
            events += follower.poll()
            if done(events):
                return events
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the awaited event\n"
                                 f"stdout:\n{out}\nstderr:\n{err}")
        time.sleep(poll)
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"timed out waiting for an event\nstdout:\n{out}\nstderr:\n{err}")


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the child did not end in {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err


def events_of(run_dir: Path) -> list[Event]:
    return list(read_events(Path(run_dir) / "events.jsonl"))


def of_type(events: list[Event], kind: str) -> list[Any]:
    return [e for e in events if e.type == kind]


def metrics_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a) if a else 0.0


def checkpoint_names(run_dir: Path) -> list[str]:
    root = Path(run_dir) / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` (relative name → content), to prove nothing was touched."""
    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(run_dir: Path) -> list[str]:
    """Temporary or half-written things a failed run must not leave behind."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    found = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
             if p.name.startswith((".tmp-step-", ".model-tmp", ".model-old", ".recipe.toml.tmp",
                                   ".write-test"))]
    return found


SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
