"""A run's `model/` folder as a finished thing: the manifest written with it, whether it is
damaged, and which checkpoint holds the same weights (to rebuild it). The engine writes
model/, resume repairs it, `trained` loads it: all three ask here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from ..errors import OutputError, PefttoolError
from .checkpoints import checkpoint_dir, checkpoint_name, manifest, replace_dir, verify_checkpoint, verify_files
from .rundir import MODEL_DIR, RunDir, RunStatus, enclosing_run, write_failure
from .summary import summarize

# Written last into model/: every file's size and CRC32 (checkpoints.manifest).
MODEL_MANIFEST = ".pefttool-files.json"


def write_model_dir(run_dir: Path, save: Callable[[Path], None]) -> Path:
    """RUN_DIR/model/ written by `save(folder)` into a temporary folder, its manifest added, then
    swapped in: old or new, never half. A full disk is the one-line `OutputError`."""
    target = run_dir / MODEL_DIR
    tmp = run_dir / f".{MODEL_DIR}-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save(tmp)
        (tmp / MODEL_MANIFEST).write_text(json.dumps(manifest(tmp), indent=1))
        replace_dir(tmp, target)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = write_failure(exc)
        if reason is None:
            raise
        raise OutputError(f"cannot save the model to {target} ({reason}); free disk "
                          f"space, then resume (the previous model and checkpoints are intact)") from exc
    return target


def manifest_damage(model_dir: Path) -> str | None:
    """What model/'s manifest finds wrong with it (a file missing, cut or changed), or None."""
    return verify_files(model_dir, MODEL_MANIFEST)


def model_damage(model_dir: Path) -> str | None:
    """What is wrong with a run's model/ (missing, a file that does not match the manifest
    written with it, weights or configs that do not read), in words; None when it is intact."""
    if not model_dir.is_dir():
        return f"{model_dir.name}/ is missing"
    return verify_files(model_dir, MODEL_MANIFEST) or _unreadable(model_dir)


def _unreadable(model_dir: Path) -> str | None:
    """What the manifest cannot tell (a model/ without one, copied or from an older pefttool):
    weights whose safetensors header or data is cut, a config that is not JSON."""
    from ..models import safetensors_damage

    for file in sorted(model_dir.glob("*.safetensors")):
        why = safetensors_damage(file)
        if why:
            return f"{file.name}: {why}"
    configs = [model_dir / n for n in ("adapter_config.json", "config.json") if (model_dir / n).is_file()]
    if not configs:
        return "neither adapter_config.json nor config.json is there"
    if (model_dir / "labels.json").is_file():
        configs.append(model_dir / "labels.json")
    for config in configs:
        try:
            if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
                return f"{config.name} is not a JSON object"
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return f"{config.name} is unreadable ({type(exc).__name__})"
    return None


def final_model_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a finished run's model/ was saved from: model/ is written at each
    improving evaluation (`_save_model`), so it holds the weights of the best step, and the
    checkpoint of that step holds the same weights. Raises `OutputError` saying what is
    missing when no intact checkpoint of that step is left."""
    end = summarize(Path(run_dir)).end
    step = end.best_step if end is not None else None
    if not isinstance(step, int):
        raise OutputError("the run recorded no best evaluation, so no checkpoint is known to hold "
                          "its model")
    path = checkpoint_dir(Path(run_dir)) / checkpoint_name(step)
    what = f"checkpoints/{path.name} (the best evaluation's, step {step}, which model/ was saved from)"
    if not (path / "trainer_state.json").is_file():
        raise OutputError(f"{what} is gone")
    damage = verify_checkpoint(path)
    if damage is not None:
        raise OutputError(f"{what} is damaged ({damage})")
    return path


def repair_advice(run: RunDir) -> str:
    """The fix for a damaged model/: resume rebuilds it from the checkpoint of the best
    evaluation (an unfinished run as it goes on training; a finished one without training).
    Only when no checkpoint holds that model is the run to be trained again (into a new
    folder: nothing is overwritten)."""
    status = summarize(run.path).status if run.events.exists() else None
    if status in (RunStatus.COMPLETED, RunStatus.EARLY_STOPPED):
        try:
            final_model_checkpoint(run.path)
        except PefttoolError as exc:
            return (f"{exc}, so resume cannot rebuild it: train it again with pefttool run "
                    f"{run.recipe} --set output.dir=NEW_FOLDER")
        return (f"rebuild it from its best checkpoint, without training: pefttool resume "
                f"{run.path}")
    return f"resume it (pefttool resume {run.path}) to rebuild it from its best checkpoint"


def copy_model_files(model_dir: Path, dest: Path) -> None:
    """Copy the files model/'s manifest lists (all of them regular files inside model/), never
    anything else there (a link, a file a user put in). A model/ from before manifests: its
    regular files, links left out."""
    def through_link(name: str) -> bool:
        parts = Path(name).parts
        return any(model_dir.joinpath(*parts[:i + 1]).is_symlink() for i in range(len(parts)))

    try:
        listed = list(json.loads((model_dir / MODEL_MANIFEST).read_text(encoding="utf-8")))
    except FileNotFoundError:
        listed = [n for n in (str(p.relative_to(model_dir)) for p in sorted(model_dir.rglob("*")))
                  if (model_dir / n).is_file() and not through_link(n)]
    except (OSError, ValueError, TypeError) as exc:
        raise OutputError(f"{model_dir / MODEL_MANIFEST} is unreadable ({type(exc).__name__}); "
                          f"resume the run to rebuild model/") from None
    dest.mkdir(parents=True)
    for name in listed:
        if (not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts
                or through_link(name) or not (model_dir / name).is_file()):
            raise OutputError(f"{model_dir}: its manifest lists {name!r}, which is not a regular "
                              f"file inside model/ (a link, or a path outside it); export copies no "
                              f"such file: resume the run to rebuild model/")
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model_dir / name, dest / name, follow_symlinks=False)


def check_export_out(out: Path) -> None:
    """An export never goes inside a run folder (or its model/): resume and overwrite replace
    what a run holds, and would remove it without a word."""
    inside = enclosing_run(out)
    if inside is not None:
        raise OutputError(f"--out: {out} is inside the run folder {inside}, whose files pefttool "
                          f"replaces (resume rebuilds model/); choose a folder outside every run "
                          f"folder, e.g. exports/{inside.name}")
