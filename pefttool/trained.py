"""A finished run's model, for use: load it, predict with it, export it.

Works on what every strategy saves in RUN_DIR/model: a PEFT adapter (lora, qlora, a plugin's
PEFT method; the base model comes from the run's recipe) or a full `save_pretrained` model.

    load_trained(run_dir)             -> Trained (model in eval mode, tokenizer, recipe, labels)
    predict(trained, texts)           -> [Prediction(answer, {label: probability})]
    export(run_dir, out, merge, dtype)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError, OutputError, one_line
from .runfolder.lifecycle import saved_run
from .runfolder.model_dir import check_export_out, copy_model_files, repair_advice
from .runfolder.rundir import write_failure
from .runfolder.summary import pid_alive
from .tasks import Prediction, check_command, get_task


@dataclass
class Trained:
    model: Any
    tokenizer: Any
    recipe: Any
    labels: list[str] | None
    adapter: bool          # model/ held a PEFT adapter (the model is base + adapter)


def load_trained(run_dir: Path, dequantize: bool = False, base: bool = False) -> Trained:
    """The run's best model, ready for inference. `dequantize`: a 4-bit (QLoRA) base is
    turned into plain float weights, exactly the values it trained against, as merging needs.
    `base`: the model the run started from instead (loaded as the run loaded it, with the
    same tokenizer and recipe), to compare replies before and after training."""
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    from .models import load_model, load_tokenizer
    from .settled import settle

    hf_logging.disable_progress_bar()  # "Writing model shards" bars in a command's output
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
    run, recipe = saved_run(run_dir)
    labels = None
    if (run.model / "labels.json").is_file():
        id2label = json.loads((run.model / "labels.json").read_text())["id2label"]
        labels = [id2label[k] for k in sorted(id2label, key=int)]
    tokenizer = load_tokenizer(recipe)
    adapter = (run.model / "adapter_config.json").is_file()
    if adapter or base:
        from peft import PeftModel

        settled = settle(recipe, check=False)   # the strategy as the run had it
        base_model = load_model(recipe, settled.strategy, settled.options, label_names=labels,
                                tokenizer=tokenizer)
        if dequantize and getattr(base_model, "hf_quantizer", None) is not None:
            base_model = base_model.dequantize()  # a quantized base, as merging needs it
        else:
            base_model = settled.strategy.for_inference(base_model, recipe, settled.options)
    from safetensors import SafetensorError

    try:
        if base:
            model = base_model
        elif adapter:
            model = PeftModel.from_pretrained(base_model, str(run.model))
        else:
            model = get_task(recipe).auto_model_class().from_pretrained(str(run.model),
                                                                        dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:

        raise ModelError(f"{run.model} cannot be loaded ({type(exc).__name__}: "
                         f"{one_line(exc, 160)}); {repair_advice(run)}") from None
    model.eval()
    return Trained(model=model, tokenizer=tokenizer, recipe=recipe, labels=labels,
                   adapter=adapter and not base)


# Characters per token, at most, with room to spare (BPE merges runs of spaces or repeated
# characters into one token of a few dozen characters at most).
MAX_CHARS_PER_TOKEN = 64


def predict(trained: Trained, texts: list[str], batch_size: int = 32,
            progress: Any = None) -> list[Prediction]:
    """The task's answer for each text (`Task.predictions`): a label and every label's
    probability (classification), a number (a regression head)..."""
    import torch

    check_command(trained.recipe, "predict")  # the API's callers too (the CLI checks before loading)
    task = get_task(trained.recipe)
    labels = trained.labels or []
    out: list[Prediction] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            # Only the first max_length tokens count: cut what lies far beyond them before the
            # tokenizer sees it (one 50 MB text took 267 s and 7.3 GB to label). A token is at
            # most MAX_CHARS_PER_TOKEN characters, so the tokens kept are the same.
            limit = trained.recipe.data.max_length * MAX_CHARS_PER_TOKEN
            chunk = [text[:limit] for text in texts[start:start + batch_size]]
            enc = trained.tokenizer(chunk, truncation=True, max_length=trained.recipe.data.max_length,
                                    padding=True, return_tensors="pt")
            out += task.predictions(trained.model(**enc).logits.float(), labels, trained.recipe)
            if progress is not None:
                progress(min(start + batch_size, len(texts)), len(texts))
    return out


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def export(run_dir: Path, out: Path, merge: bool = False, dtype: str = "fp32") -> Path:
    """Write the run's model to `out` (which must not exist, or be empty): the adapter as is,
    or (`merge`) merged into its base as a plain transformers model (no PEFT needed to load
    it; a QLoRA base is dequantized first). Written into a temporary folder, then renamed."""
    check_export_out(out)
    import torch

    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"--out: {out} exists and is not empty; choose a new folder (export "
                          f"never overwrites)")
    run, recipe = saved_run(run_dir)
    adapter = (run.model / "adapter_config.json").is_file()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale_exports(out)
    try:
        if not merge:
            copy_model_files(run.model, tmp)
        elif not adapter:  # a full model is "merged" already; only the dtype may change
            trained = load_trained(run.path)
            trained.model.to(getattr(torch, DTYPES[dtype])).save_pretrained(tmp, safe_serialization=True)
            trained.tokenizer.save_pretrained(tmp)
            if (run.model / "labels.json").is_file():
                shutil.copy2(run.model / "labels.json", tmp / "labels.json")
        else:
            trained = load_trained(run.path, dequantize=True)
            merged = trained.model.merge_and_unload()
            merged.to(getattr(torch, DTYPES[dtype]))
            if getattr(merged.config, "quantization_config", None) is not None:
                del merged.config.quantization_config
            merged.save_pretrained(tmp, safe_serialization=True)
            trained.tokenizer.save_pretrained(tmp)
            if (run.model / "labels.json").is_file():
                shutil.copy2(run.model / "labels.json", tmp / "labels.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = write_failure(exc) if isinstance(exc, Exception) else None
        if reason:  # a full disk, a file-size limit, a read-only folder: one line, nothing left
            raise OutputError(f"--out: cannot write the export to {out} ({reason}); nothing was left "
                              f"there: free space or choose another folder") from None
        raise
    return out


def _remove_stale_exports(out: Path) -> None:
    """Hidden `.OUT.tmp-PID` folders of earlier exports to `out` whose process is gone (killed
    while writing): nothing else would ever remove them."""
    import glob

    for stale in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def gguf_converter() -> str | None:
    """llama.cpp's converter script, if it is on PATH."""
    for name in ("convert_hf_to_gguf.py", "convert-hf-to-gguf.py", "convert_hf_to_gguf"):
        found = shutil.which(name)
        if found:
            return found
    return None
