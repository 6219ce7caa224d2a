"""Length grouping (`data.group_by_length`) vs random batches: real (non-pad) tokens/s and accuracy.

Runs recipes/lora.toml (MiniLM + LoRA, Rotten Tomatoes) as A B A B ... pairs with only
data.group_by_length changed (A random batches, B grouped), short (max_train_rows, one epoch,
batch 32, one torch thread), and prints a table of each run's training tokens/s (non-pad tokens
/ training seconds, as metrics.json reports it) and eval accuracy, then the ratio B/A per pair
and the median ratio with its range. Goal (issue 8): ≥ 1.4x tokens/s, accuracy within 1 point.
The figures depend on the machine's load: on a shared machine say so next to them.

    python benchmarks/length_grouping.py [--pairs 2] [--rows 1200] [--batch 32] [--out /tmp/lg-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(grouped: bool, rows: int, out: Path, tag: str, batch: int = 32, threads: int = 1,
        epochs: int = 1, seed: int = 42) -> dict:
    run_dir = out / tag
    cmd = [sys.executable, "-m", "pefttool.cli", "run", str(ROOT / "recipes" / "lora.toml"),
           "--set", f"data.group_by_length={'true' if grouped else 'false'}",
           "--set", f"data.max_train_rows={rows}", "--set", "data.max_eval_rows=400",
           "--set", f"train.epochs={epochs}", "--set", f"train.batch_size={batch}",
           "--set", f"train.seed={seed}",
           "--set", f"train.threads={threads}", "--set", "eval.before_training=false",
           "--set", "early_stopping.enabled=false",
           "--set", f"output.dir={run_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    metrics = json.loads(next(run_dir.rglob("metrics.json")).read_text())
    acc = (metrics.get("best_metrics") or {}).get("accuracy")
    if acc is None and metrics["history"]:
        acc = metrics["history"][-1].get("accuracy")
    return {"tokens_per_s": metrics["tokens_per_s"], "train_s": metrics["train_seconds"],
            "accuracy": acc, "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/pefttool-bench-length-grouping"))
    a = ap.parse_args()
    results: dict[bool, list[dict]] = {False: [], True: []}
    print(f"recipes/lora.toml, {a.rows} train rows, 400 eval rows, batch {a.batch}, {a.epochs} epoch(s), "
          f"pair p trains with train.seed 42 + p (both runs of a pair share it; "
          f"the same rows and held-out split for all), "
          f"{a.threads} torch thread(s), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    print(f"{'run':<12}{'seed':>5}{'grouped':>8}{'tokens/s':>11}{'train s':>9}{'accuracy':>10}")
    for p in range(a.pairs):
        for grouped in (False, True):
            tag = f"{'B' if grouped else 'A'}{p + 1}"
            r = run(grouped, a.rows, a.out / f"{int(time.time())}", tag, a.batch, a.threads,
                    a.epochs, 42 + p)
            results[grouped].append(r)
            print(f"{tag:<12}{42 + p:>5}{str(grouped):>8}{r['tokens_per_s']:>11.1f}{r['train_s']:>9.1f}"
                  f"{r['accuracy']:>10.4f}", flush=True)
    ratios = [b["tokens_per_s"] / a_["tokens_per_s"] for a_, b in zip(results[False], results[True])]
    points = [100 * (b["accuracy"] - a_["accuracy"]) for a_, b in zip(results[False], results[True])]
    print(f"\nreal tokens/s grouped / random, per pair: {', '.join(f'{r:.2f}x' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}; "
          f"goal >= 1.4x)")
    print(f"accuracy grouped - random, per pair: {', '.join(f'{d:+.2f}' for d in points)} points; "
          f"median {statistics.median(points):+.2f} (goal within ±1)")
    for grouped in (False, True):
        accs = [r["accuracy"] for r in results[grouped]]
        print(f"accuracy {'grouped' if grouped else 'random '} over the seeds: mean {statistics.mean(accs):.4f}, "
              f"range {min(accs):.4f}-{max(accs):.4f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
