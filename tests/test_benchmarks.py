"""Smoke tests of benchmarks/: each benchmark runs at its smallest size and prints its table.
No figure is asserted (speed targets live in the benchmarks, not in tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.bench
@pytest.mark.real
@pytest.mark.skipif(os.environ.get("PEFTTOOL_BENCH_SMOKE") != "1",
                    reason="set PEFTTOOL_BENCH_SMOKE=1: each runs real models for 1-3 minutes, too long for every CI run")
@pytest.mark.parametrize("which", ["trainer", "mfu", "memory", "startup", "bf16"])
def test_benchmark_runs_and_prints_its_table(which, tmp_path):
    p = _run(str(BENCH / "bench.py"), which, "--smoke", "--work", str(tmp_path))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "FAILED" not in p.stdout
    tables = [line for line in p.stdout.splitlines() if line.startswith("### ")]
    assert tables, p.stdout
    assert any(line.startswith("|--") or line.startswith("|-") for line in p.stdout.splitlines())


def test_gpu_check_skips_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the skip path is not taken here")
    p = _run(str(BENCH / "gpu_check.py"), timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1].startswith("gpu_check: skipped: CUDA is not available")


def test_gpu_scripts_parse_and_pin_one_version_of_each_wheel():
    """The GPU machine's set-up (benchmarks/gpu_setup.sh) and the wheels' rebuild
    (scripts/gpu_wheels.sh) run once per lent GPU: a syntax error there costs a device call.
    Two versions of one wheel would stop the install there."""
    import re

    for script in (BENCH / "gpu_setup.sh", ROOT / "scripts" / "gpu_wheels.sh"):
        p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    pins = re.findall(r"([A-Za-z0-9_.-]+)==(\d[\w.]*)", (ROOT / "scripts" / "gpu_wheels.sh").read_text())
    names = [re.sub(r"[-_.]+", "-", name).lower() for name, _ in pins]
    assert len(names) == len(set(names)), names
    assert {"bitsandbytes", "pydantic", "pydantic-core", "datasets", "tomli-w"} <= set(names)


@pytest.mark.parametrize("strategy", ["full", "lora", "qlora"])
def test_gpu_check_recipes_validate(strategy, tiny_causal_dir, tmp_path, monkeypatch):
    import contextlib
    import io

    import gpu_check

    import bench
    from pefttool.cli import main

    def validate_here(path):
        """gpu_check.validate, in this process: the same `pefttool validate`, without a fresh
        interpreter importing torch and bitsandbytes for each of the qlora row's ~10 keys (a
        minute of the suite)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = main(["validate", str(path)])
        return rc == 0, out.getvalue().strip()

    monkeypatch.setattr(gpu_check, "validate", validate_here)

    train, eval_ = bench.long_texts(tmp_path, 4, 2)
    path, unsupported = gpu_check.build_recipe(tmp_path, f"g-{strategy}", str(tiny_causal_dir), None, train,
                                               eval_, strategy, seq=64, batch=2, steps=2)
    ok, message = gpu_check.validate(path)
    assert ok, message
    text = path.read_text()
    expected = gpu_check.COMMON_KEYS + (gpu_check.QLORA_KEYS if strategy == "qlora" else [])
    for key, value in expected:   # every optional key is either in the recipe or reported unsupported
        name = key.split(".", 1)[1]
        assert (f"{name} = {value}" in text) != (key in unsupported), key
    assert f'strategy = "{strategy}"' in text


def test_gpu_check_dpo_row_recipe_validates_and_trains(tiny_causal_dir, tmp_path):
    """The GPU check's DPO row, on the CPU: its pairs and recipe (bf16 on the device; float32
    and a few steps here) validate and train."""
    import gpu_check

    import bench
    from pefttool.engine import run_recipe
    from pefttool.recipe import load_recipe

    train, _ = bench.long_texts(tmp_path, 8, 2)
    path = gpu_check.dpo_recipe(tmp_path, "g-dpo", str(tiny_causal_dir), None, train, seq=64, batch=4, steps=2)
    text = path.read_text().replace('dtype = "bfloat16"', 'dtype = "float32"').replace(
        'mixed_precision = "bf16"', 'mixed_precision = "no"\ndevice = "cpu"\nthreads = 1')
    path.write_text(text + f'[output]\ndir = "{tmp_path / "runs" / "g-dpo"}"\n')
    result = run_recipe(load_recipe(path))
    assert result.status == "completed" and result.steps == 2


def test_set_key_replaces_or_adds():
    import gpu_check

    text = "[model]\ndtype = \"float32\"\n[train]\nepochs = 1\n"
    out = gpu_check.set_key(text, "model.dtype", '"bfloat16"')
    assert 'dtype = "bfloat16"' in out and "float32" not in out
    out = gpu_check.set_key(out, "train.optimizer", '"paged_adamw_8bit"')
    assert out.index('optimizer = "paged_adamw_8bit"') > out.index("[train]")


def test_rounds_alternate_order_and_ratios_report_median_and_range():
    import bench

    calls = []
    runs = {name: (lambda name=name: calls.append(name) or {"name": name}) for name in "ABC"}
    rounds = bench.rounds_run(4, runs)
    assert calls == list("ABC" "CBA" "ABC" "CBA")   # A B / B A: no side always runs first
    assert [sorted(r) for r in rounds] == [list("ABC")] * 4
    assert bench.median_spread([1.1, 1.5, 1.2]) == "1.20× (range 1.10–1.50, 3 pairs)"
    assert bench.median_spread([0.9]) == "0.90× (1 pair)"
    # each comparison of the Trainer table is a distinct (pefttool, Trainer) pairing with a goal
    assert [(t, g) for _, t, g, _ in bench.TRAINER_ROWS] == [("random", "random"), ("grouped", "random"),
                                                            ("grouped", "grouped")]


def test_mfu_variants_table_ranks_by_cpu_seconds(monkeypatch, capsys):
    import argparse

    import bench

    speeds = {(8, None, None): 800.0, (16, None, None): 900.0, (8, "bf16", None): 270.0, (8, None, True): 1040.0}
    seen = []

    def fake_worker(kind, cfg, threads):
        seen.append(cfg)
        cps = speeds[(cfg["batch"], cfg.get("mixed_precision"), cfg.get("compile"))]
        return {"tokens_per_s": cps / 2, "tokens_per_cpu_s": cps, "last_loss": 8.0}

    monkeypatch.setattr(bench, "worker", fake_worker)
    a = argparse.Namespace(pairs=2, threads=1, smoke=False)
    out = bench.mfu_variants(a, bench.Path("m"), bench.Path("t"), 48, 256, 8, 4 * 16.9e6,
                             {"float32": 70.0, "float32_cpu": 140.0})
    assert len(seen) == 8 and all(c["warmup"] == 1 for c in seen)  # 4 variants x 2 rounds
    text = out[0]
    assert "| fp32, batch 8, torch.compile | 520" in text and "1.30× (range 1.30–1.30, 2 pairs)" in text
    assert "50 %" in text   # 1040 tok per CPU-s x 67.6 MFLOP / 140 GFLOP per CPU-s
