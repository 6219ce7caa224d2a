"""Length grouping (`data.group_by_length`) vs random batches: real (non-pad) tokens/s and accuracy.

Runs recipes/lora.toml (MiniLM + LoRA, Rotten Tomatoes) A B A B ... with only
data.group_by_length changed, short (max_train_rows, one epoch), and prints a table of each run's
training tokens/s (non-pad tokens / training seconds, as metrics.json reports it) and eval
accuracy, then the ratio of the means. Goal: ≥ 1.4x tokens/s, accuracy within 1 point.
The figures depend on the machine's load: on a shared machine say so next to them.

    python benchmarks/length_grouping.py [--pairs 2] [--rows 1200] [--out /tmp/lg-bench]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(grouped: bool, rows: int, out: Path, tag: str) -> dict:
    run_dir = out / tag
    cmd = [sys.executable, "-m", "pefttool.cli", "run", str(ROOT / "recipes" / "lora.toml"),
           "--set", f"data.group_by_length={'true' if grouped else 'false'}",
           "--set", f"data.max_train_rows={rows}", "--set", "data.max_eval_rows=400",
           "--set", "train.epochs=1", "--set", "train.batch_size=16",
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
    ap.add_argument("--out", type=Path, default=Path("/tmp/pefttool-bench-length-grouping"))
    a = ap.parse_args()
    results: dict[bool, list[dict]] = {False: [], True: []}
    print(f"{'run':<12}{'grouped':>8}{'tokens/s':>11}{'train s':>9}{'accuracy':>10}")
    for p in range(a.pairs):
        for grouped in (False, True):
            tag = f"{'B' if grouped else 'A'}{p + 1}"
            r = run(grouped, a.rows, a.out / f"{int(time.time())}", tag)
            results[grouped].append(r)
            print(f"{tag:<12}{str(grouped):>8}{r['tokens_per_s']:>11.1f}{r['train_s']:>9.1f}"
                  f"{r['accuracy']:>10.4f}", flush=True)
    tps = {g: statistics.mean(r["tokens_per_s"] for r in rs) for g, rs in results.items()}
    acc = {g: statistics.mean(r["accuracy"] for r in rs) for g, rs in results.items()}
    print(f"\nmean tokens/s: random {tps[False]:.1f}, grouped {tps[True]:.1f} → "
          f"{tps[True] / tps[False]:.2f}x (goal ≥ 1.4x)")
    print(f"mean accuracy: random {acc[False]:.4f}, grouped {acc[True]:.4f} → "
          f"{100 * (acc[True] - acc[False]):+.2f} points (goal within ±1)")


if __name__ == "__main__":
    main()
