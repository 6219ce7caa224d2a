"""A run's `model/` folder as a finished thing: the manifest written with it, whether it is
damaged, and which checkpoint holds the same weights (to rebuild it). The engine writes
model/, resume repairs it, `trained` loads it: all three ask here."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoints import checkpoint_dir, checkpoint_name, verify_checkpoint, verify_files
from .errors import OutputError

# Written last into model/: every file's size and CRC32 (checkpoints.manifest).
MODEL_MANIFEST = ".pefttool-files.json"


def model_damage(model_dir: Path) -> str | None:
    """What is wrong with a run's model/ (missing, a file that does not match the manifest
    written with it, weights or configs that do not read), in words; None when it is intact."""
    if not model_dir.is_dir():
        return f"{model_dir.name}/ is missing"
    return verify_files(model_dir, MODEL_MANIFEST) or _unreadable(model_dir)


def _unreadable(model_dir: Path) -> str | None:
    """What the manifest cannot tell (a model/ without one, copied or from an older pefttool):
    weights whose safetensors header or data is cut, a config that is not JSON."""
    from .models import safetensors_damage

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
    from .runs import summarize

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
