"""Held-out accuracy of the example strategies (LoRA+, IA³) against plain LoRA on the demo data.

Every run is `pefttool run recipes/lora.toml` (MiniLM, Rotten Tomatoes) with the SAME reduced
budget and the same held-out split; only the strategy, its options and the learning rate
change. Runs go one after another, at low priority. The example plugins are made importable
from this checkout (a throw-away folder with their entry points, as `pip install` would write),
so nothing is installed. Prints a Markdown table of what it measured.

    python examples/compare_methods.py                      # the grid below
    python examples/compare_methods.py --only loraplus      # one method
    python examples/compare_methods.py --steps 3 --train-rows 48 --eval-rows 64   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# (method label, strategy, lr, extra --set options). LoRA+ as its paper tunes it: the base LoRA
# learning rate for A and ratio ~16 for B; IA³ rescaling vectors want a far higher rate.
GRID: list[tuple[str, str, float, dict[str, str]]] = [  # the most telling runs first
    ("LoRA", "lora", 1e-3, {}),
    ("LoRA+", "loraplus", 2e-4, {"method.lr_ratio": "16"}),
    ("IA³", "ia3", 1e-2, {}),
    ("IA³", "ia3", 3e-2, {}),
    ("LoRA", "lora", 2e-3, {}),
    ("LoRA+", "loraplus", 2e-4, {"method.lr_ratio": "4"}),
    ("LoRA+", "loraplus", 5e-4, {"method.lr_ratio": "16"}),
    ("LoRA", "lora", 5e-4, {}),
]
# LoRA's own options in recipes/lora.toml that the other strategies do not take.
LORA_ONLY = ("r", "alpha", "dropout", "target_modules")


def make_site(folder: Path) -> Path:
    """A folder with each example's dist-info (its `pefttool` entry points), so that, with the
    example projects on PYTHONPATH, importlib.metadata finds them as if pip-installed."""
    for project in ("pefttool-loraplus", "pefttool-ia3"):
        meta = tomllib.loads((HERE / project / "pyproject.toml").read_text())["project"]
        info = folder / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\n"
                                       f"Version: {meta['version']}\n")
        points = meta["entry-points"]["pefttool"]
        (info / "entry_points.txt").write_text(
            "[pefttool]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    return folder


def run_one(strategy: str, lr: float, extra: dict[str, str], args: argparse.Namespace,
            out: Path, env: dict[str, str]) -> tuple[float, int, float]:
    """Train one configuration; return (final held-out accuracy, steps, wall seconds). A run
    that already completed in `out` (an earlier, interrupted grid) is read, not repeated."""
    done = _result(out)
    if done is not None:
        return done
    method: list[str] = [f"method.strategy={strategy}"]
    if strategy == "loraplus":  # LoRA+ takes LoRA's rank options: keep the demo's
        method += ["method.r=16", "method.alpha=32", "method.dropout=0.1"]
    sets = [*method, f"train.lr={lr}", f"train.max_steps={args.steps}", "train.epochs=1",
            f"train.batch_size={args.batch}",
            f"data.max_train_rows={args.train_rows}", f"data.max_eval_rows={args.eval_rows}",
            "eval.before_training=false", "early_stopping.enabled=false",
            f"train.threads={args.threads}", f"output.dir={out}", "output.overwrite=true",
            *(f"{k}={v}" for k, v in extra.items())]
    recipe = _recipe_for(strategy, out.parent)  # the runs' folder
    command = ["nice", "-n", "10", sys.executable, "-m", "pefttool.cli", "run", str(recipe),
               "--quiet", *(x for s in sets for x in ("--set", s))]
    began = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    took = time.monotonic() - began
    if result.returncode != 0:
        raise SystemExit(f"{strategy} lr {lr}: exit {result.returncode}: "
                         f"{result.stderr.strip().splitlines()[-1:]}")
    result = _result(out)
    if result is None:
        raise SystemExit(f"{strategy} lr {lr}: the run in {out} did not complete")
    return result[0], result[1], took


def _result(out: Path) -> tuple[float, int, float] | None:
    """(last held-out accuracy, its step, the run's duration) of a completed run in `out`."""
    path = out / "events.jsonl"
    if not path.is_file():
        return None
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    end = [e for e in events if e.get("type") == "end"]
    evals = [e for e in events if e.get("type") == "eval" and not e.get("before")]
    if not end or end[-1]["status"] != "completed" or not evals:
        return None
    return evals[-1]["metrics"]["accuracy"], evals[-1]["step"], end[-1]["duration_s"]


def _recipe_for(strategy: str, folder: Path) -> Path:
    """recipes/lora.toml, less LoRA's own [method] keys for a strategy that does not take them
    (a `--set` can change a key, not remove one)."""
    source = (REPO / "recipes" / "lora.toml").read_text()
    if strategy == "lora":
        return REPO / "recipes" / "lora.toml"
    lines = [line for line in source.splitlines()
             if line.split("=")[0].strip() not in LORA_ONLY]
    # Paths in the recipe are package: paths, so the copy may live anywhere.
    path = folder / f"lora-as-{strategy}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=16, help="train.batch_size")
    parser.add_argument("--train-rows", type=int, default=960, help="data.max_train_rows")
    parser.add_argument("--eval-rows", type=int, default=500, help="data.max_eval_rows")
    parser.add_argument("--threads", type=int, default=1, help="train.threads")
    parser.add_argument("--only", help="run only this strategy (lora, loraplus, ia3)")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: a temp folder)")
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="pefttool-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    site = make_site(out / "site")
    paths = [str(site), str(HERE / "pefttool-loraplus"), str(HERE / "pefttool-ia3")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    print(f"runs in {out}; budget: {args.steps} steps × batch {args.batch}, {args.train_rows} train rows, "
          f"{args.eval_rows} held-out rows, seed 42", flush=True)
    print("| method | strategy | lr | options | steps | held-out accuracy | wall time |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for label, strategy, lr, extra in GRID:
        if args.only and strategy != args.only:
            continue
        run_dir = out / "-".join([strategy, f"lr{lr:g}", *extra.values()])
        accuracy, steps, took = run_one(strategy, lr, extra, args, run_dir, env)
        options = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in extra.items()) or "—"
        print(f"| {label} | {strategy} | {lr:g} | {options} | {steps} | {accuracy:.3f} | "
              f"{took / 60:.1f} min |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
