"""What a checkpoint keeps of the model: the weights training changes, and a fingerprint of the
frozen rest.

A LoRA or QLoRA checkpoint that held the whole model would carry the frozen base (5 GB for an
8 B model in 4-bit, 16 GB in bf16) at every save, and a 4-bit base cannot even be loaded back
through `load_state_dict` (its quantization state is not a plain tensor). So when some
parameters are frozen, a checkpoint's `model.safetensors` holds only the trainable parameters
(adapters, a trained head, `modules_to_save`) and the model's persistent buffers, and
`model_state.json` beside it records a fingerprint of the frozen parameters (their count,
bytes, and a checksum of a sample of their values). Resume loads those tensors into the model
it has just loaded and wrapped the same way, after checking that the base matches the
fingerprint. A model whose parameters all train (full fine-tuning) is saved whole, as
Accelerate does by itself.

Both halves are Accelerate state hooks (`register_save_state_pre_hook` /
`register_load_state_pre_hook`), so every `save_state`/`load_state` of the run goes through
them: interval, epoch and stop checkpoints, resume, and the rebuild of a damaged `model/`.
A checkpoint written before this file existed (the whole model) still loads as it was saved.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputError

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

MODEL_STATE_FILE = "model_state.json"
FORMAT = 1
# The fingerprint reads this many values from each of this many frozen tensors (a few hundred
# KiB in all, whatever the model's size): enough to tell one base model from another.
SAMPLE_TENSORS, SAMPLE_VALUES = 8, 4096


def use_trainable_checkpoints(accelerator: Accelerator) -> None:
    """Register the save and load hooks on `accelerator` (once, after `prepare`)."""
    main = accelerator.is_main_process

    def save_hook(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        entries: list[dict[str, Any]] = []
        for i, model in enumerate(models):
            keep = trainable_keys(model, weights[i])
            if keep is None:  # every parameter trains: the whole state dict, as Accelerate saves it
                entries.append({"holds": "all"})
                continue
            weights[i] = {k: v for k, v in weights[i].items() if k in keep}
            entries.append({"holds": "trainable", "tensors": len(keep), "base": fingerprint(model)})
        if main and any(e["holds"] == "trainable" for e in entries):
            (Path(output_dir) / MODEL_STATE_FILE).write_text(
                json.dumps({"format": FORMAT, "models": entries}, indent=1), encoding="utf-8")

    def load_hook(models: list[Any], input_dir: str) -> None:
        info = read_model_state(Path(input_dir))
        if info is None:
            return  # the whole model was saved: Accelerate loads it
        entries = info.get("models") or []
        if len(entries) != len(models):
            raise OutputError(f"{Path(input_dir).name}: its {MODEL_STATE_FILE} describes {len(entries)} "
                              f"model(s) and the run has {len(models)}; resume from another checkpoint")
        for i, (model, entry) in enumerate(zip(list(models), entries)):
            if entry.get("holds") == "trainable":
                load_trainable(model, Path(input_dir) / weights_file(i), entry, Path(input_dir).name)
        # Accelerate loads what is left in the list the usual way (models saved whole).
        models[:] = [m for m, e in zip(models, entries) if e.get("holds") != "trainable"]

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def weights_file(index: int) -> str:
    """The file Accelerate writes model `index`'s state to (safetensors)."""
    return "model.safetensors" if index == 0 else f"model_{index}.safetensors"


def read_model_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's `model_state.json`, or None when it holds whole models (none written)."""
    path = checkpoint / MODEL_STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{checkpoint.name}/{MODEL_STATE_FILE} is unreadable ({type(exc).__name__}); "
                          f"resume from another checkpoint") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OutputError(f"{checkpoint.name}/{MODEL_STATE_FILE} is not one this pefttool writes")
    return data


def trainable_keys(model: torch.nn.Module, state: dict[str, Any]) -> set[str] | None:
    """The keys of `state` (the model's state dict, as Accelerate takes it) that a checkpoint
    keeps: trainable parameters and persistent buffers. None when every parameter trains.

    Matched by storage, not by name, so a DDP (`module.`) or compile (`_orig_mod.`) prefix on
    either side does not matter."""
    params = list(model.parameters())
    if all(p.requires_grad for p in params):
        return None
    wanted = {_storage(p) for p in params if p.requires_grad and p.numel()}
    wanted |= {_storage(b) for b in model.buffers() if b.numel()}
    return {k for k, v in state.items() if hasattr(v, "data_ptr") and v.numel() and _storage(v) in wanted}


def _storage(t: torch.Tensor) -> tuple[int, int, str]:
    return (t.data_ptr(), t.numel(), str(t.device))


def fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Count, bytes and a sampled checksum of the frozen parameters: the base a checkpoint's
    trainable weights apply to. The same base, loaded and wrapped the same way, gives the same
    fingerprint on any device."""
    import torch

    frozen = [p for p in model.parameters() if not p.requires_grad]
    digest = hashlib.sha256()
    step = max(1, len(frozen) // SAMPLE_TENSORS)
    for p in frozen[::step][:SAMPLE_TENSORS]:
        values = p.detach().reshape(-1)[:SAMPLE_VALUES].to("cpu").contiguous()
        digest.update(f"{tuple(p.shape)}/{p.dtype};".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes())
    return {"frozen_params": len(frozen), "frozen_bytes": sum(p.numel() * p.element_size() for p in frozen),
            "sample_sha256": digest.hexdigest()[:32]}


def load_trainable(model: torch.nn.Module, path: Path, entry: dict[str, Any], name: str) -> None:
    """Load a checkpoint's trainable tensors into `model`, after checking the base matches."""
    from safetensors.torch import load_file

    ours = fingerprint(model)
    theirs = entry.get("base") or {}
    if ours != theirs:
        changed = ", ".join(f"{k} {theirs.get(k)} → {ours[k]}" for k in ours if theirs.get(k) != ours[k])
        raise OutputError(f"{name} was trained on another base model than the one loaded now ({changed}); "
                          f"resume with the model.path (and files) the run began with")
    try:
        saved = load_file(str(path), device="cpu")
    except Exception as exc:  # a damaged file that slipped past the manifest (written without one)
        raise OutputError(f"{name}/{path.name} does not read ({type(exc).__name__}); resume from "
                          f"another checkpoint") from None
    state = model.state_dict()
    keep = trainable_keys(model, state) or set(state)
    missing = sorted(keep - saved.keys())
    extra = sorted(saved.keys() - state.keys())
    if missing or extra:
        what = (f"lacks {len(missing)} trainable tensor(s) ({', '.join(missing[:3])})" if missing
                else f"has {len(extra)} tensor(s) the model does not ({', '.join(extra[:3])})")
        raise OutputError(f"{name} {what}: it was written for another model or other method "
                          f"options; resume with the recipe the run began with")
    model.load_state_dict(saved, strict=False)
