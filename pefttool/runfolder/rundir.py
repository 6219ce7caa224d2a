"""A run directory: the one home of a run's files, its statuses and exit codes.

```
RUN_DIR/
  .pefttool-run      the run marker (JSON: format, created, the resolved recipe): written first
  .lock              held (flock) by the one process writing this run; holds its pid and host
  recipe.toml        the recipe as it ran (defaults filled in, local paths absolute)
  events.jsonl       one JSON event per line
  checkpoints/       step-NNNNNNN/ (see checkpoints.py, model_state.py)
  model/             the best model so far
  metrics.json       before/best metrics, data counts, timings
  samples.jsonl      (eval.samples) replies to held-out prompts before and after training
  stderr.log         (runs launched from the TUI) the child's stderr
  plots.png          loss, learning rate and eval curves, drawn at the end (needs matplotlib)
  tensorboard/       TensorBoard event files (when tensorboard is installed)
```

Rules that keep a user's files safe:
  * only a folder that holds a pefttool run (its marker, or the events.jsonl + recipe.toml of
    a run from before markers) is ever cleared by `output.overwrite`, and then only the files
    a run writes;
  * a run directory has one writer: the lock is taken before anything is written, and a second
    writer is refused with the live pid;
  * a run that failed before it started training (bad data, a model that does not load)
    leaves nothing that blocks running the same command again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from ..errors import OutputError


class RunStatus(StrEnum):
    """How a run stands; the strings are what events.jsonl and metrics.json hold."""

    RUNNING = "running"
    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    CRASHED = "crashed"      # running by its events, but its process is gone (killed)
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.EARLY_STOPPED)


class ExitCode(IntEnum):
    """The process exit codes of `pefttool`."""

    OK = 0
    INTERNAL = 1            # a bug: please report it
    BAD_INPUT = 2           # recipe, data, model, plugin, output folder
    TRAINING_FAILED = 3     # a NaN loss, a plugin failing mid-run...

    @staticmethod
    def for_signal(signum: int | None) -> int:
        """128 + the signal that stopped the run (130 SIGINT, 143 SIGTERM, 129 SIGHUP)."""
        return 128 + signum if signum else 130


MARKER_FILE = ".pefttool-run"
LOCK_FILE = ".lock"
RECIPE_FILE = "recipe.toml"
EVENTS_FILE = "events.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.jsonl"
STDERR_FILE = "stderr.log"
PLOT_FILE = "plots.png"
TENSORBOARD_DIR = "tensorboard"
# What a run writes; `output.overwrite = true` removes only these, never anything else.
RUN_ARTIFACTS = (MODEL_DIR, CHECKPOINTS_DIR, EVENTS_FILE, RECIPE_FILE, METRICS_FILE, STDERR_FILE,
                 MARKER_FILE, PLOT_FILE, TENSORBOARD_DIR, SAMPLES_FILE, ".model-tmp", ".model-old")
MARKER_FORMAT = 1

# Keys a resumed run may change: they do not change what is trained or in what order.
# train.compile changes how the steps are computed, not what: a checkpoint holds the plain
# module's state either way, so a run may resume with compile switched on or off. So does
# train.loss_chunks: the same loss in chunks or over the full logits (equal within 1e-5), for a
# run that needs the memory after all, or one whose strategy reads the logits.
RESUME_MAY_CHANGE = ("train.log_every", "train.threads", "train.keep_checkpoints",
                     "train.checkpoint_every", "train.compile", "train.loss_chunks", "eval.batch_size")
# ...and keys that differ between two folders of the same run (a copied or moved run).
RESUME_IGNORES = ("description", "output.dir", "output.overwrite")


def replace_file(path: Path, data: str | bytes) -> None:
    """Write `path` by replacing it: a new file beside it (never opened through a link), then
    renamed over the path, so a link at the path is replaced, never written through."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed (disk full, file too large...), or None if `exc` is no I/O error.
    The Rust writers (safetensors, tokenizers) raise plain exceptions such as
    'File too large (os error 27)' rather than OSError."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    import re

    match = re.search(r"os error (\d+)", str(exc))
    if match:
        return os.strerror(int(match.group(1)))
    if isinstance(exc, RuntimeError) and ("inline_container" in str(exc) or "PytorchStreamWriter" in str(exc)):
        # torch.save's archive writer (optimizer.bin) reports a short write without its errno:
        # a file-size limit in force explains it, else the disk filled up.
        import errno
        import resource

        limited = resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY
        return os.strerror(errno.EFBIG if limited else errno.ENOSPC)
    return None


def open_append(path: Path) -> Any:
    """`path` opened for appending text, refusing a link there (ELOOP) instead of following it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, "a", encoding="utf-8")


def enclosing_run(path: Path | str) -> Path | None:
    """The run folder that holds `path` (or is it), by its marker or events.jsonl + recipe.toml,
    looking up from the path as resolved (links followed); None outside every run folder."""
    here = Path(path).expanduser().resolve()
    for folder in (here, *here.parents):
        with contextlib.suppress(OSError):
            if RunDir(folder).is_run():
                return folder
    return None


def check_resume_overrides(overrides: list[str]) -> None:
    """`pefttool resume RUN --set KEY=VALUE`: only the keys a resume may change (one line else)."""
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if key not in RESUME_MAY_CHANGE:
            raise OutputError(f"--set {key}: a resume continues the run as it began, so only "
                              f"{', '.join(RESUME_MAY_CHANGE)} may change; start a new run to change "
                              f"{key or 'that'}")


class RunDir:
    """The files of one run, and the rules for creating, reusing and locking its folder."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- names
    @property
    def marker(self) -> Path:
        return self.path / MARKER_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def events(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def model(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def stderr(self) -> Path:
        return self.path / STDERR_FILE

    @property
    def plot(self) -> Path:
        return self.path / PLOT_FILE

    # -- what the folder holds

    def is_run(self) -> bool:
        """A folder a pefttool run wrote: its marker, or (runs from before markers) both its
        events.jsonl and its recipe.toml."""
        return self.marker.is_file() or (self.events.is_file() and self.recipe.is_file())

    def saved_nothing(self) -> bool:
        """A run that ended before it saved anything to resume or keep: no checkpoint, no
        model (bad data, a model that would not load, a stop during set-up, a plugin failing
        in the first steps). Its own events and logs are all it wrote."""
        return self.is_run() and not self.model.exists() and not any(self.checkpoints.glob("step-*"))

    def read_marker(self) -> dict[str, Any]:
        try:
            data = json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_marker(self, resolved_recipe: dict[str, Any]) -> None:
        """Written once, when the run is created: what it is, and the recipe it started with
        (resume compares against this, whatever happens to recipe.toml later)."""
        data = {"format": MARKER_FORMAT, "created": time.time(), "recipe": resolved_recipe}
        replace_file(self.marker, json.dumps(data, indent=1))

    def check_links(self) -> None:
        """Refuse a run folder whose own files (the ones pefttool writes) are symbolic links
        pointing outside it: writing the run would change files elsewhere."""
        base = self.path.resolve()
        for name in (*RUN_ARTIFACTS, LOCK_FILE):
            target = self.path / name
            if not target.is_symlink():
                continue
            points_to = Path(os.path.realpath(target))
            if points_to == base or base in points_to.parents:
                continue
            raise OutputError(f"{target} is a symbolic link to {os.readlink(target)}, outside the run "
                              f"folder; pefttool writes its own files there, so it would change that "
                              f"file: replace the link by a copy of the file (cp --remove-destination) "
                              f"or remove it, then try again")

    # -- one writer

    def acquire(self) -> str | None:
        """Take the run's lock (flock on `.lock`, released by the OS when the process dies).
        Returns a line to log when a stale lock of a dead process was taken over. Raises
        `OutputError` naming the live writer when another process holds it."""
        import fcntl

        for _ in range(10):
            self.check_links()
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                holder = self.lock_holder()
                who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
                raise OutputError(f"the run in {self.path} is being written by another pefttool "
                                  f"({who}); wait for it to end, or stop it (kill -INT "
                                  f"{holder.get('pid', 'PID')}) and resume") from None
            # The holder deletes `.lock` when it ends: if it did so between our open and our
            # flock, we hold a lock on a deleted file, and a third process would create and
            # lock a new one. Only a lock on the file that is still at the path counts.
            mine = os.fstat(fd)
            try:
                there = os.stat(self.lock_file)
            except FileNotFoundError:
                there = None
            if there is not None and (there.st_ino, there.st_dev) == (mine.st_ino, mine.st_dev):
                break
            os.close(fd)
        else:
            raise OutputError(f"could not lock the run in {self.path}: its .lock file keeps "
                              f"changing (another pefttool starting and ending); try again")
        previous = self.lock_holder()
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.time()}).encode())
        os.fsync(fd)
        self._lock_fd = fd
        if previous.get("pid") and previous.get("pid") != os.getpid():
            return (f"took over the lock of pid {previous['pid']} on {previous.get('host', '?')}, "
                    f"which is no longer running (it was killed, or its machine restarted)")
        return None

    def lock_holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.lock_file.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock_file.unlink()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
        self._lock_fd = None

    # -- preparing

    def clear_artifacts(self) -> None:
        """Remove what a run wrote (never anything else in the folder)."""
        for name in RUN_ARTIFACTS:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()

    def recover_after_kill(self) -> None:
        """Undo what a kill in the middle of a write left behind, before resuming: a model/
        moved aside while being replaced (put it back), and temporary folders (remove them)."""
        old = self.path / f".{MODEL_DIR}-old"
        if old.is_dir() and not self.model.exists():
            os.replace(old, self.model)
        for stale in (old, self.path / f".{MODEL_DIR}-tmp", *self.checkpoints.glob(".tmp-step-*")):
            shutil.rmtree(stale, ignore_errors=True)

    def check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.unlink(missing_ok=True)  # a link there is removed, not written through
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise OutputError(f"output.dir: cannot write to {self.path} ({exc.strerror}); choose a "
                              f"writable output.dir") from exc


def claim_new(path: Path, overwrite: bool, templated_time: bool) -> tuple[RunDir, str | None]:
    """The folder for a new run, locked. Returns (run dir, a line to log or None).

    `templated_time`: the path came from an `output.dir` with `{time}`, so a taken name gets a
    `-2`, `-3`... suffix (two runs started in the same second) instead of an error.
    """
    if templated_time:
        for i in range(1, 1000):
            candidate = path if i == 1 else path.with_name(f"{path.name}-{i}")
            try:
                candidate.mkdir(parents=True)
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError(f"output.dir: cannot create {candidate} ({exc.strerror}); choose a "
                                  f"writable output.dir") from exc
            run = RunDir(candidate)
            run.check_writable()
            return run, run.acquire()
        raise OutputError(f"output.dir: {path} and 998 numbered variants exist; clean up {path.parent}")

    run = RunDir(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output.dir: {path} is a file, not a folder; choose another output.dir")
    note = None
    if path.is_dir() and any(path.iterdir()):
        if not run.is_run():
            names = sorted(p.name for p in path.iterdir())
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise OutputError(f"output.dir: {path} already holds files that are not a pefttool run "
                              f"({shown}); choose another output.dir (pefttool never deletes what it "
                              f"did not write)")
        run.check_writable()
        stale = run.acquire()  # before anything is removed: a live run there refuses us here
        try:
            if run.saved_nothing():
                note = f"replacing the run in {path}, which ended before it saved a checkpoint or a model"
            elif not overwrite:
                raise OutputError(f"output.dir: {path} holds a previous run; resume it (pefttool "
                                  f"resume {path}), choose another output.dir, or set "
                                  f"output.overwrite = true to replace it")
            else:
                note = f"output.overwrite: replaced the previous run in {path}"
            run.clear_artifacts()
        except BaseException:
            run.release()
            raise
        return run, "; ".join(x for x in (stale, note) if x) or None
    run.check_writable()
    return run, run.acquire()
