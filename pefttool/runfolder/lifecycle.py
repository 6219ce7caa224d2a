"""A run folder's life: a new run claimed, an earlier one opened to resume (the checkpoint to
go on from, or the model/ to rebuild), the recipe saved with it and read back, and why a write
into it failed. The engine, `pefttool resume`/`predict`/`export` and the TUI all open a run
folder here; `rundir` holds its names and its lock."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputError, PefttoolError
from .checkpoints import list_checkpoints, verify_checkpoint
from .model_dir import final_model_checkpoint, model_damage, repair_advice
from .resumable import resumability
from .rundir import (
    EVENTS_FILE,
    RECIPE_FILE,
    RESUME_IGNORES,
    RESUME_MAY_CHANGE,
    RunDir,
    RunStatus,
    claim_new,
    replace_file,
)
from .summary import summarize

if TYPE_CHECKING:
    from ..recipe import Recipe

HARMLESS_ON_RESUME = RESUME_MAY_CHANGE + RESUME_IGNORES


def open_new_run(recipe: Recipe, run_dir: Path | None) -> tuple[RunDir, list[str]]:
    """The folder of a new run, created and locked; refuses to clobber anything."""
    templated = run_dir is None and "{time}" in recipe.output.dir
    path = run_dir or recipe.output_dir(datetime.now().strftime("%Y%m%d-%H%M%S"))
    run, note = claim_new(Path(path), recipe.output.overwrite, templated)
    return run, [note] if note else []


def open_for_resume(recipe: Recipe, run_dir: Path | None
                     ) -> tuple[RunDir, Path, list[str], str | None]:
    """The run to continue, locked, and the newest checkpoint that verifies; or, for a finished
    run whose model/ is damaged or gone, the checkpoint to rebuild model/ from and the damage
    (the 4th value; None for a run that goes on training)."""
    run = RunDir(run_dir or newest_run(recipe))
    if not run.events.exists():
        raise OutputError(resumability(run.path).reason)
    notes = [n for n in [run.acquire()] if n]
    try:
        answer = resumability(run.path)   # the one answer the CLI and the TUI read too
        status = answer.status
        if answer.action == "rebuild":
            damage = answer.damage
            assert damage is not None
            refuse_changed_recipe(recipe, run)
            try:
                return run, final_model_checkpoint(run.path), notes, damage
            except OutputError as exc:
                raise OutputError(
                    f"the run in {run.path} finished ({status}) and its model/ is damaged "
                    f"({damage}), but {exc}: nothing is left to rebuild it from; train it again "
                    f"with pefttool run {run.recipe} --set output.dir=NEW_FOLDER") from None
        if answer.action == "none" and "no checkpoint left" not in answer.reason:
            raise OutputError(answer.reason)   # finished, or still running
        refuse_changed_recipe(recipe, run)
        run.recover_after_kill()
        checkpoint = None
        skipped = []
        for candidate in reversed(list_checkpoints(run.path, complete_only=False)):
            damage = verify_checkpoint(candidate)  # a lost state file reads as "… is missing"
            if damage is None:
                checkpoint = candidate
                break
            skipped.append(f"skipped checkpoint {candidate.name}: {damage}")
        notes += skipped
        if checkpoint is None:
            why = "every checkpoint failed its check" if skipped else "checkpoints/ is empty or gone"
            raise OutputError(
                f"the run in {run.path} has no checkpoint left to resume from ({why}); start it "
                f"again with pefttool run RECIPE --set output.dir={run.path} --set "
                f"output.overwrite=true, or choose a fresh output.dir")
    except BaseException:
        run.release()
        raise
    return run, checkpoint, notes, None


def refuse_changed_recipe(recipe: Recipe, run: RunDir) -> None:
    """Resume continues the run it was: a recipe that would change what is trained, or in
    which order (model, data, method, batch, schedule, steps, seed...), is refused with every
    difference listed. Compared with the recipe saved when the run was created."""
    saved = run.read_marker().get("recipe")
    if not isinstance(saved, dict):  # a run from before markers: its recipe.toml
        from ..recipe import read_toml

        try:
            saved = read_toml(run.recipe)
        except PefttoolError:
            return
    from ..recipe import validate_recipe

    try:  # defaults filled in, as `given` has them
        saved = validate_recipe(saved, check_files=False, base_dir=run.path).to_dict()
    except PefttoolError:
        pass
    given = resolved_recipe_dict(recipe, run.path)
    old, new = _flatten(saved), _flatten(given)
    changed = [k for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k) and not k.startswith(HARMLESS_ON_RESUME)]
    if changed:
        lines = [f"{k}: {old.get(k, '(unset)')!r} → {new.get(k, '(unset)')!r}" for k in changed]
        raise OutputError(f"the run in {run.path} started with another recipe; resume continues it "
                          f"as it began, so these must match: {'; '.join(lines)} (start a new run "
                          f"to train with them)")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def newest_run(recipe: Recipe) -> Path:
    pattern = recipe.output_dir("")  # {time} → '*'
    names = [pattern.name] + ([pattern.name + "-[0-9]*"] if "{time}" in recipe.output.dir else [])
    candidates = sorted((p for name in names for p in pattern.parent.glob(name)
                         if (p / EVENTS_FILE).exists()),
                        key=lambda p: (p / EVENTS_FILE).stat().st_mtime)
    if not candidates:
        raise OutputError(f"no earlier run of '{recipe.name}' to resume under {pattern.parent}; "
                          f"run it without --resume first")
    # The newest *unfinished* run: a finished run started later must not hide an interrupted one.
    unfinished = [p for p in candidates
                  if summarize(p).status not in (RunStatus.COMPLETED, RunStatus.EARLY_STOPPED)]
    if not unfinished:
        raise OutputError(f"every run of '{recipe.name}' under {pattern.parent} already finished "
                          f"(newest: {candidates[-1]}); run it without --resume to start a new one")
    return unfinished[-1]


def resolved_recipe_dict(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """The recipe as it runs: defaults filled in, local paths absolute, output.dir = run_dir."""
    data = recipe.to_dict()
    for section, key in (("model", "path"), ("data", "train"), ("data", "eval"), ("data", "chat_template")):
        loc = data.get(section, {}).get(key)
        if isinstance(loc, str) and loc and not loc.startswith("package:"):
            path = recipe.resolve_path(loc)
            if path.exists():
                data[section][key] = str(path.resolve())
    data["output"]["dir"] = str(run_dir)
    return data


def write_resolved_recipe(recipe: Recipe, run_dir: Path) -> None:
    """Save the recipe as it runs into RUN_DIR/recipe.toml (atomically)."""
    import tomli_w

    replace_file(run_dir / RECIPE_FILE, tomli_w.dumps(resolved_recipe_dict(recipe, run_dir)))


def saved_recipe(run_dir: Path, overrides: list[str] | None = None, check_files: bool = True) -> Any:
    """The recipe a run folder ran with (its recipe.toml, as `write_resolved_recipe` saved it),
    with `overrides` applied. The one reading of a run's recipe: resume, predict, export,
    generate and the TUI go through it. `check_files=False`: its data files may be gone (a
    finished model needs none)."""
    from ..recipe import load_recipe

    run_dir = Path(run_dir).resolve()
    recipe_path = run_dir / RECIPE_FILE
    if not recipe_path.is_file():
        raise OutputError(f"{run_dir} is not a pefttool run (no {RECIPE_FILE}); pass the folder "
                          f"that `pefttool run` printed")
    return load_recipe(recipe_path, overrides or [], check_files=check_files)


def saved_run(run_dir: Path) -> tuple[RunDir, Any]:
    """The run folder and its saved recipe, checked to hold an intact model/ (no model is
    loaded): what `predict`, `export`, `generate` need before they load anything."""
    run = RunDir(Path(run_dir).resolve())
    if not run.recipe.is_file():
        raise OutputError(f"{run.path} is not a pefttool run (no recipe.toml); pass the folder "
                          f"that pefttool run printed")
    if not run.model.is_dir():
        raise OutputError(f"the run in {run.path} has no model/ yet (it saves one at its first "
                          f"evaluation after training); resume it, or pick a finished run")
    damage = model_damage(run.model)
    if damage:
        raise OutputError(f"{run.model} is damaged ({damage}); {repair_advice(run)}")
    return run, saved_recipe(run.path, check_files=False)
