"""Checkpoints a run can always be resumed from.

A checkpoint is `RUN_DIR/checkpoints/step-NNNNNNN/`: Accelerate's `save_state` (model,
optimizer, scheduler, RNG states) plus `trainer_state.json` (step, data position,
early-stopping state, best metric). It is written into a temporary folder and renamed into
place, and `trainer_state.json` is written last, so a kill at any moment leaves either the
complete new checkpoint or none: the previous one is untouched and is what resume uses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import OutputError, one_line  # noqa: E402
from .rundir import CHECKPOINTS_DIR as CHECKPOINTS  # noqa: E402
from .rundir import write_failure  # noqa: E402

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Everything besides tensors that resuming needs."""

    global_step: int = 0
    epoch: int = 0                   # the epoch in progress (0-based)
    batches_done: int = 0            # micro-batches of that epoch already trained on
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0               # evaluations in a row without improvement
    before: dict[str, float] = field(default_factory=dict)  # metrics before training
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # every evaluation
    nan_skipped: int = 0
    processes: int = 1               # the processes that trained it (resume needs as many)
    train_seconds: float = 0.0       # time spent training, summed over resumes
    tokens_seen: int = 0
    best_checkpoint: str | None = None
    # Every file of the checkpoint: relative path → [size, crc32] ([size, None] above
    # CRC_LIMIT). Written last, with the rest of this file, so resume can tell a checkpoint
    # damaged after it was written (a truncated file, a bad disk) from a good one.
    files: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> TrainState:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint written after `step` (`step-0000040`)."""
    return f"step-{step:07d}"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: Path, complete_only: bool = True) -> list[Path]:
    """Complete checkpoints, oldest first (unfinished temporary folders are ignored).
    `complete_only=False`: also step folders that lost their state file (a checkpoint is
    renamed into place whole, so such a folder was damaged afterwards), for resume to name."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (not complete_only or (path / STATE_FILE).is_file()):
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


# Checksums cost a read of each file; above this size a file is checked by its size alone.
CRC_LIMIT = 1 << 30


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def manifest(folder: Path) -> dict[str, list[Any]]:
    """[size, crc32] of every file under `folder` (the state file itself excluded)."""
    out: dict[str, list[Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != STATE_FILE and not path.name.startswith(".pefttool-"):
            size = path.stat().st_size
            out[str(path.relative_to(folder))] = [size, _crc32(path) if size <= CRC_LIMIT else None]
    return out


def verify_checkpoint(path: Path) -> str | None:
    """Why the checkpoint cannot be trusted (a missing, truncated or changed file), or None.
    Checkpoints written before manifests existed are checked for their state file only."""
    return verify_files(path, STATE_FILE, key="files")


def verify_files(folder: Path, manifest_name: str, key: str | None = None) -> str | None:
    """Check `folder` against the manifest in `folder/manifest_name` (under `key` if given):
    None when every file has its size and checksum; else what is wrong, in words."""
    try:
        data = json.loads((folder / manifest_name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None if key is None else f"{manifest_name} is missing"
    except (OSError, ValueError) as exc:
        return f"{manifest_name} is unreadable ({type(exc).__name__})"
    files = data.get(key) if key and isinstance(data, dict) else data
    if not isinstance(files, dict):
        return None
    for name, entry in files.items():
        if not (isinstance(entry, list) and len(entry) == 2):
            return f"{manifest_name} is damaged"
        size, crc = entry
        path = folder
        file = path / name
        if file.name == manifest_name:
            continue
        if not file.is_file():
            return f"{name} is missing"
        actual = file.stat().st_size
        if actual != size:
            return f"{name} is {actual:,} bytes, {size:,} were written"
        if crc is not None and _crc32(file) != crc:
            return f"{name} changed since it was written (checksum differs)"
    return None


def load_checkpoint_state(accelerator: Any, checkpoint: Path) -> None:
    """`accelerator.load_state(checkpoint)`, with its two quiet or sprawling failures made one
    line: a random-state file that does not load (Accelerate logs it at info level and goes on
    without restoring the RNG, so the resume is not exact) is refused, and a pickle that
    weights-only loading refuses (a forged optimizer.bin: a multi-line UnpicklingError) names
    its file."""
    import pickle

    from accelerate.utils import load

    rng = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    try:
        load(rng)
    except Exception as exc:
        raise OutputError(f"{rng} does not load ({type(exc).__name__}: {one_line(exc)}); without "
                          f"it the resume is not exact. Remove {checkpoint.name} to resume from the "
                          f"checkpoint before it") from None
    try:
        accelerator.load_state(str(checkpoint))
    except pickle.UnpicklingError as exc:
        bad = "a file"
        for candidate in sorted(checkpoint.glob("*.bin")):
            try:
                load(candidate)
            except Exception:
                bad = candidate.name
                break
        raise OutputError(f"{checkpoint}: {bad} holds a pickle that safe loading refuses "
                          f"({one_line(exc)}); pefttool did not write it. Remove {checkpoint.name} "
                          f"to resume from the checkpoint before it") from None


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    run_dir: Path,
    state: TrainState,
    save_tensors: Callable[[Path], None],
    keep: int,
    main: bool = True,
    token: str | None = None,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write a checkpoint atomically; prune to the last `keep` plus the best. Returns its path.

    Several processes: every one calls this (each saves its own state into the same
    temporary folder, named by `token`); the main one finishes it (manifest, state file,
    rename, pruning) between barriers.
    """
    try:
        return _save_checkpoint(run_dir, state, save_tensors, keep, main, token, barrier)
    except Exception as exc:
        why = write_failure(exc)
        if why is None:
            raise
        raise OutputError(f"cannot write a checkpoint in {run_dir} ({why}); free disk space, "
                          f"then resume (earlier checkpoints are intact)") from exc


def _save_checkpoint(run_dir: Path, state: TrainState, save_tensors: Callable[[Path], None],
                     keep: int, main: bool, token: str | None, barrier: Callable[[], None]) -> Path:
    root = checkpoint_dir(run_dir)
    final = root / checkpoint_name(state.global_step)
    tmp = root / f".tmp-{checkpoint_name(state.global_step)}-{token or os.getpid()}"
    if main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    barrier()
    if not main:
        save_tensors(tmp)
        barrier()
        barrier()
        return final
    try:
        save_tensors(tmp)
        barrier()
        state.files = manifest(tmp)
        _write_json_durably(tmp / STATE_FILE, asdict(state))
        if final.exists():  # the same step saved again (e.g. epoch end right after an interval)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(run_dir, keep, protect=state.best_checkpoint, token=token)
    barrier()
    return final


def prune(run_dir: Path, keep: int, protect: str | None = None, token: str | None = None) -> None:
    """Delete all but the newest `keep` checkpoints, never the protected (best) one."""
    checkpoints = list_checkpoints(run_dir)
    for path in checkpoints[: max(0, len(checkpoints) - keep)]:
        if protect and path.name == Path(protect).name:
            continue
        shutil.rmtree(path, ignore_errors=True)
    for stale in checkpoint_dir(run_dir).glob(".tmp-step-*"):
        if not stale.name.endswith(f"-{token or os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run


def replace_dir(src: Path, dst: Path) -> None:
    """Put `src` where `dst` is, so that `dst` is always either complete old or complete new."""
    old = dst.with_name(f".{dst.name}-old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def _write_json_durably(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
