"""How close `pefttool plan`'s CPU memory estimate comes to the measured peak of real runs.

    python benchmarks/plan_accuracy.py [--steps 3] [--recipes lora full ...] [--json OUT]

For each built-in recipe (recipes/*.toml) it prints `pefttool plan`'s estimated CPU peak
(runtime baseline + weights + gradients + optimizer state + activations) next to the peak RSS
of a real `pefttool run` of the same recipe, measured with `os.wait4` on that one child
process (its ru_maxrss, so nothing else on the machine counts), and their ratio. The runs are
short: `train.max_steps` (3), no evaluation before training, `data.max_eval_rows` cut to one
eval batch, one torch thread, output into a temporary folder deleted afterwards. The batch
size and max_length are the recipe's own, so the training step's memory is the recipe's.

The runtime baseline (Python + torch + transformers + peft + accelerate + datasets, imported,
nothing loaded) is itself measured here, by `pefttool.plan.runtime_baseline()`, in a fresh
process: it is the same figure `pefttool plan` adds to its CPU estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
MiB = 2**20


# Variants the estimate's model was not tuned on (other batch, optimizer, attention,
# checkpointing): (label, recipe stem, overrides).
VARIANTS = [
    ("lora batch 64", "lora", ["train.batch_size=64"]),
    ("full adafactor", "full", ["train.optimizer=\"adafactor\""]),
    ("lora eager + grad ckpt", "lora", ["model.attn_implementation=\"eager\"",
                                        "train.gradient_checkpointing=true"]),
]


def measure_run(recipe: Path, steps: int, out_root: Path, overrides: list[str] | None = None,
                label: str | None = None) -> dict:
    """Peak RSS (MiB) of one short `pefttool run RECIPE` in its own process."""
    out = out_root / (label or recipe.stem).replace(" ", "-")
    cmd = [sys.executable, "-m", "pefttool.cli", "run", str(recipe), "--quiet",
           *[f"--set={o}" for o in overrides or []],
           f"--set=train.max_steps={steps}", "--set=eval.before_training=false",
           "--set=train.threads=1", "--set=train.log_every=1",
           f"--set=output.dir=\"{out}\"", "--set=output.overwrite=true"]
    cmd += _eval_rows(recipe)
    # cwd: the repository, where chat-qlora.toml's build/chat paths (make chat-data) resolve
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"plan_accuracy: {recipe.name} run failed (exit {proc.returncode}):\n{output[-2000:]}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": round(time.time() - started, 1)}


def _eval_rows(recipe: Path) -> list[str]:
    """One eval batch: the recipe's eval.batch_size rows (the eval pass keeps its batch shape)."""
    from pefttool.recipe import load_recipe

    r = load_recipe(recipe)
    return [f"--set=data.max_eval_rows={r.eval.batch_size}"]


def estimate(recipe: Path, overrides: list[str] | None = None) -> dict:
    from pefttool.plan import estimate as plan_estimate
    from pefttool.recipe import load_recipe

    r = load_recipe(recipe, overrides or [])
    started = time.time()
    plan = plan_estimate(r, device="cpu")
    own = plan.own
    return {"estimate_mib": own.cpu.total / MiB, "seconds": round(time.time() - started, 2),
            "parts": {k: round(v / MiB, 1) for k, v in own.cpu.parts().items()},
            "phase": own.peak_phase("cpu"),
            "phases": {k: round(v / MiB, 1) for k, v in own.phases.get("cpu", {}).items()},
            "trainable": own.params_trainable}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--recipes", nargs="*", default=None, help="recipe stems (default: all)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--measured", type=Path, help="reuse measured rows from an earlier --json")
    ap.add_argument("--no-variants", action="store_true", help="only the built-in recipes as they are")
    args = ap.parse_args(argv)
    cases = [(p.stem, p, []) for p in sorted(RECIPES.glob("*.toml"))]
    if not args.no_variants:
        cases += [(label, RECIPES / f"{stem}.toml", overrides) for label, stem, overrides in VARIANTS]
    if args.recipes:
        cases = [c for c in cases if c[1].stem in args.recipes]
    from pefttool.plan import runtime_baseline

    baseline = runtime_baseline(refresh=True)
    print(f"runtime baseline (fresh process importing the training stack): {baseline / MiB:.0f} MiB")
    earlier = json.loads(args.measured.read_text()) if args.measured else {}
    rows = {}
    out_root = Path(tempfile.mkdtemp(prefix="plan-accuracy-"))
    try:
        for label, recipe, overrides in cases:
            row = estimate(recipe, overrides)
            if label in earlier:
                row.update({k: earlier[label][k] for k in ("peak_rss_mib", "wall_s")})
                row["reused"] = True
            else:
                row.update(measure_run(recipe, args.steps, out_root, overrides, label))
            row["ratio"] = row["estimate_mib"] / row["peak_rss_mib"]
            row["overrides"] = overrides
            rows[label] = row
            if args.json:  # as it goes: a long run keeps what it measured
                args.json.write_text(json.dumps(rows, indent=2))
            print(f"{label}: estimate {row['estimate_mib']:.0f} MiB, measured {row['peak_rss_mib']:.0f} MiB "
                  f"({row['wall_s']} s run), ratio {row['ratio']:.2f}; the estimate took {row['seconds']} s "
                  f"(a first call for this recipe: the first row also imports torch, transformers, PEFT)", flush=True)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    print()
    print(f"### `pefttool plan` CPU estimate vs measured peak RSS ({args.steps} steps, 1 thread)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (RSS is not a timing; the runs are slower under load)")
    print("| recipe (overrides) | estimate MiB | measured peak RSS MiB | estimate / measured | estimated peak during "
          "(training / eval MiB) | estimate parts MiB (baseline, weights, grads, optimizer, activations, other) |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        parts = ", ".join(f"{v:.0f}" for v in row["parts"].values())
        what = f"{name}.toml" if not row["overrides"] else f"{name} ({', '.join(row['overrides'])})"
        phases = " / ".join(f"{v:.0f}" for v in row.get("phases", {}).values())
        print(f"| {what} | {row['estimate_mib']:.0f} | {row['peak_rss_mib']:.0f} | {row['ratio']:.2f} | "
              f"{row.get('phase', 'training')} ({phases}) | {parts} |")
    print()
    print("### `pefttool.plan.estimate` call time on lora.toml after a first call (what the TUI's Adjust screen pays)")
    from pefttool.plan import estimate as plan_estimate
    from pefttool.recipe import load_recipe

    plan_estimate(load_recipe(RECIPES / "lora.toml"))
    print("| change | seconds |")
    print("|---|---|")
    for what, overrides in (("none (cached)", []), ("train.batch_size 32 → 8", ["train.batch_size=8"]),
                            ("data.max_length 64 → 96", ["data.max_length=96"]),
                            ("method.r 16 → 32", ["method.r=32"])):
        recipe = load_recipe(RECIPES / "lora.toml", overrides)
        started = time.time()
        plan_estimate(recipe)
        print(f"| {what} | {time.time() - started:.2f} |")
    worst = max(abs(r["ratio"] - 1) for r in rows.values()) if rows else 0
    print(f"\nworst deviation: {worst:.0%} (goal: within 25 %)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
