"""Packing (`data.packing`) vs padded batches: real (non-pad) tokens/s and held-out eval loss.

Runs a causal-LM recipe (default recipes/sft-lora.toml: SmolLM2-135M + LoRA; later
recipes/chat-qlora.toml) as A B A B ... pairs with only data.packing changed (A padded, B
packed), short (data.max_train_rows, one epoch, eval loss as the metric so no generation), and
prints each run's training tokens/s (real tokens / training seconds, as metrics.json reports
it: padding is never counted), steps and held-out eval loss, then per pair the ratio B/A, and
the median ratio with its range. A packed row holds several examples, so with the same
train.batch_size a packed run takes fewer, larger optimizer steps, and its eval loss after one
epoch would differ for that reason alone; by default (--batch-packed match) the packed run's
train.batch_size is chosen from the packed rows (pefttool's own pack_rows on the prepared data)
so both runs take about the same number of steps of about the same number of examples. Goal (issue 8): ≥ 1.5x real tokens/s, eval loss equal within
noise. The machine's load moves the figures: read them against the spread, and say so.

    python benchmarks/packing.py [--recipe recipes/sft-lora.toml] [--pairs 2] [--rows 160]
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


def _overrides(a: argparse.Namespace) -> dict:
    sets = {"data.max_train_rows": a.rows, "data.max_eval_rows": a.eval_rows, "train.epochs": 1,
            "train.threads": a.threads, "train.checkpoint_every": 0, "eval.metric": "eval_loss",
            "eval.before_training": "false", "early_stopping.enabled": "false"}
    if a.max_length:
        sets["data.max_length"] = a.max_length
    for item in a.set:  # --set KEY=VALUE, for both runs
        key, _, value = item.partition("=")
        sets[key] = value
    return sets


def matched_batch(recipe_path: Path, a: argparse.Namespace) -> tuple[int, int, int, int]:
    """(padded batch, packed batch, examples, packed rows): the packed train.batch_size that
    gives about as many steps per epoch as the padded run."""
    from pefttool.data import prepare_data
    from pefttool.models import load_tokenizer
    from pefttool.recipe import load_recipe
    from pefttool.sampling import EpochShuffleSampler, pack_rows

    sets = [f"{k}={v}" for k, v in _overrides(a).items()]
    if a.batch:
        sets.append(f"train.batch_size={a.batch}")
    recipe = load_recipe(recipe_path, sets)
    data = prepare_data(recipe, load_tokenizer(recipe), log=lambda _: None)
    lengths = [len(ids) for ids in data.train["input_ids"]]
    rows = pack_rows(lengths, recipe.data.max_length, recipe.train.seed)
    batch = recipe.train.batch_size
    packed_batch = max(1, round(batch * len(rows) / len(lengths)))
    # The share of computed positions that are real tokens, in the epoch-0 batches of each run
    # (the ceiling of the speed-up, before attention's cost per position is counted).
    order = EpochShuffleSampler(len(lengths), recipe.train.seed)._permutation()
    padded = sum(max(lengths[i] for i in order[s:s + batch]) * len(order[s:s + batch])
                 for s in range(0, len(order), batch))
    row_len = [sum(lengths[i] for i in row) for row in rows]
    row_order = EpochShuffleSampler(len(rows), recipe.train.seed)._permutation()
    packed = sum(max(row_len[i] for i in row_order[s:s + packed_batch]) * len(row_order[s:s + packed_batch])
                 for s in range(0, len(row_order), packed_batch))
    print(f"real tokens / computed positions, epoch 0: padded batches {sum(lengths) / padded:.1%}, "
          f"packed batches {sum(lengths) / packed:.1%} (mean example {sum(lengths) / len(lengths):.0f} "
          f"tokens, max_length {recipe.data.max_length})")
    return batch, packed_batch, len(lengths), len(rows)


def run(recipe: Path, packing: bool, a: argparse.Namespace, run_dir: Path, batch: int,
        seed: int) -> dict:
    sets = {"data.packing": str(packing).lower(), **_overrides(a), "output.dir": run_dir,
            "train.seed": seed}
    if batch:
        sets["train.batch_size"] = batch
    cmd = [sys.executable, "-m", "pefttool.cli", "run", str(recipe)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
        sys.exit(f"packing benchmark: the {'packed' if packing else 'padded'} run failed "
                 f"(exit {proc.returncode}): {tail}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    last = metrics["history"][-1]
    return {"tokens_per_s": metrics["tokens_per_s"], "train_s": metrics["train_seconds"],
            "steps": metrics["steps"], "eval_loss": last["eval_loss"],
            "wall_s": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "sft-lora.toml",
                    help="a causal-LM recipe (default: recipes/sft-lora.toml)")
    ap.add_argument("--pairs", type=int, default=2, help="A B pairs (A padded, B packed)")
    ap.add_argument("--rows", type=int, default=160, help="data.max_train_rows")
    ap.add_argument("--eval-rows", type=int, default=64, help="data.max_eval_rows")
    ap.add_argument("--max-length", type=int, default=256,
                    help="data.max_length for both runs: the packed row size (0: the recipe's)")
    ap.add_argument("--batch", type=int, default=0, help="train.batch_size (0: the recipe's)")
    ap.add_argument("--batch-packed", default="match",
                    help="the packed run's train.batch_size: 'match' (about the padded run's "
                         "steps), 'same', or a number")
    ap.add_argument("--ceiling-only", action="store_true",
                    help="print the real-token shares of padded and packed batches (tokenizer "
                         "only, no training) and stop")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another recipe override for both runs (repeatable)")
    ap.add_argument("--threads", type=int, default=1, help="train.threads")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pefttool-bench-packing"))
    a = ap.parse_args()
    if not a.recipe.is_file():
        print(f"packing benchmark: {a.recipe} is not a file; name a causal-LM recipe", file=sys.stderr)
        return 2
    out = a.out / time.strftime("%Y%m%d-%H%M%S")
    padded_batch, packed_batch = a.batch, a.batch
    if a.batch_packed == "match" or a.ceiling_only:
        padded_batch, packed_batch, examples, rows = matched_batch(a.recipe, a)
        print(f"{examples} train examples pack into {rows} rows: padded batch {padded_batch} "
              f"examples, packed batch {packed_batch} rows (about the same steps per epoch)")
        if a.ceiling_only:
            return 0
    elif a.batch_packed != "same":
        packed_batch = int(a.batch_packed)
    print(f"recipe {a.recipe.name}, {a.rows} train rows, {a.eval_rows} eval rows, 1 epoch, "
          f"max_length {a.max_length or 'as the recipe'}, "
          f"{a.threads} torch thread(s), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    print("pair p trains with train.seed 42 + p (both runs of a pair share it): the eval loss "
          "spread across pairs is the seed noise the packed - padded difference compares with")
    print(f"{'run':<5}{'packing':>8}{'real tok/s':>12}{'train s':>9}{'steps':>7}{'eval loss':>11}")
    pairs: list[tuple[dict, dict]] = []
    for p in range(a.pairs):
        pair = []
        for packing in (False, True):
            tag = f"{'B' if packing else 'A'}{p + 1}"
            r = run(a.recipe, packing, a, out / tag, packed_batch if packing else padded_batch, 42 + p)
            pair.append(r)
            print(f"{tag:<5}{str(packing):>8}{r['tokens_per_s']:>12.1f}{r['train_s']:>9.1f}"
                  f"{r['steps']:>7}{r['eval_loss']:>11.4f}", flush=True)
        pairs.append((pair[0], pair[1]))
    ratios = [b["tokens_per_s"] / a_["tokens_per_s"] for a_, b in pairs]
    losses = [b["eval_loss"] - a_["eval_loss"] for a_, b in pairs]
    padded_losses = ", ".join(f"{a_['eval_loss']:.4f}" for a_, _ in pairs)
    print(f"\nreal tokens/s packed / padded, per pair: {', '.join(f'{r:.2f}x' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}; "
          f"goal >= 1.5x)")
    print(f"held-out eval loss packed - padded, per pair: {', '.join(f'{d:+.4f}' for d in losses)} "
          f"(padded, per seed: {padded_losses}; runs of one "
          f"setting and seed repeat exactly: a difference within a pair comes from packing's "
          f"batches)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
