"""What the UI does to a run folder besides watching it: resume it, delete it.

No textual here. Deleting is careful in the way `output.overwrite` is (pefttool/runfolder/rundir.py):
only a folder a pefttool run wrote, only the files a run (or this UI) writes there, never a
run that is still going; the folder itself goes only once nothing else is left in it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..runfolder.checkpoints import list_checkpoints
from ..runfolder.resumable import resumability
from ..runfolder.rundir import LOCK_FILE, RunDir
from ..runfolder.summary import pid_alive, summarize

# Files the UI itself writes into a run folder (besides the run's own, RUN_ARTIFACTS).
UI_FILES = ("adjusted-recipe.toml", LOCK_FILE)

class RunActionError(Exception):
    """A one-line reason a run cannot be resumed or deleted."""


def resume_command(run_command: list[str], run_dir: Path) -> list[str]:
    """`pefttool resume RUN_DIR --quiet`, from the command the UI trains with (`... run`)."""
    base = list(run_command)
    if base and base[-1] == "run":
        base = base[:-1]
    return [*base, "resume", str(run_dir), "--quiet"]


def can_resume(run_dir: Path) -> bool:
    """An interrupted, crashed or failed run with a checkpoint goes on where it stopped; a
    finished one whose model/ is damaged is rebuilt (pefttool/runfolder/resumable.py: the CLI's answer)."""
    return resumability(Path(run_dir)).action != "none"


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run wrote a checkpoint to resume from (cheap: a folder listing, for the
    keys a screen offers; `can_resume` is the full answer)."""
    return bool(list_checkpoints(Path(run_dir)))


def check_deletable(run_dir: Path) -> RunDir:
    """The run folder, if the UI may delete it: a folder with pefttool's run marker (a folder
    that merely holds an events.jsonl and a recipe.toml may be the user's own: refused, always)
    whose run is not going. Raises RunActionError saying why not; asked before the confirm."""
    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise RunActionError(f"{run.path} is not a folder")
    if not run.marker.is_file():
        raise RunActionError(f"{run.path} was not written by pefttool (no run marker): "
                             f"left as it is")
    state = summarize(run.path)
    holder = run.lock_holder().get("pid")
    if state.status == "running" or (isinstance(holder, int) and pid_alive(holder)):
        raise RunActionError(f"{run.path.name} is still running: stop it first")
    return run


def delete_run(run_dir: Path) -> list[str]:
    """Delete a finished or stopped pefttool run. Returns the names of the files left because
    pefttool did not write them (the folder stays then); raises RunActionError if the folder
    is not a pefttool run or the run is still going."""
    run = check_deletable(run_dir)
    run.clear_artifacts()
    for name in UI_FILES:
        with contextlib.suppress(FileNotFoundError):
            (run.path / name).unlink()
    kept = sorted(p.name for p in run.path.iterdir())
    if not kept:
        run.path.rmdir()   # empty now (rmdir: never removes anything that appeared since)
    return kept


def run_commands(run_dir: Path) -> list[tuple[str, str]]:
    """(what, command) lines for a run folder: the commands that reproduce, continue, use
    and export it, as a user would type them (quoted where a path needs it)."""
    import shlex

    run = RunDir(Path(run_dir).resolve())
    path = shlex.quote(str(run.path))
    return [
        ("the run folder", str(run.path)),
        ("run it again (a new folder)", f"pefttool run {shlex.quote(str(run.recipe))}"),
        ("continue it (interrupted)", f"pefttool resume {path}"),
        ("its curves as a PNG", f"pefttool plot {path}"),
        ("compare with another run", f"pefttool plot {path} OTHER_RUN --out compare.png"),
        ("export, adapter merged", f"pefttool export {path} --out EXPORT_DIR --merge"),
        ("follow it from another terminal", f"pefttool tui --attach {path}"),
    ]
