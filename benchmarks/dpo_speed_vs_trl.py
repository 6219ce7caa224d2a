"""A short DPO run side by side with TRL's DPOTrainer: tokens/s and peak memory (issue 26.6).

    PYTHONPATH=/path/to/trl-site python benchmarks/dpo_speed_vs_trl.py [--steps 10]

Needs `make chat-data` and TRL importable (installed apart: it is not a dependency). Each side
runs in its own fresh process, one after the other, on the same machine: SmolLM2-135M-Instruct
(fp32), LoRA r 8 / alpha 16 on q/k/v/o, DPO beta 0.1, 4 pairs a step, max_length 128, lr 5e-4,
`--steps` steps, 2 torch threads, no evaluation while training; the pairs are the first ones
of build/chat/chatterbot-pairs.jsonl as each tool reads them. Measured: training tokens per
second (every token of both rows of each pair, prompt and padding aside: pefttool's
metrics.json tokens_per_s, TRL's num_tokens over its train_runtime) and the process's peak
RSS (getrusage). It prints both and the ratios; goals: tokens/s >= 1.2x TRL, peak <= 0.8x TRL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

OURS = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
from pefttool.engine import run_recipe
from pefttool.recipe import load_recipe
steps, out = int(sys.argv[1]), sys.argv[2]
recipe = load_recipe("recipes/dpo-lora.toml", [f"train.max_steps={steps}", "train.threads=2",
    "eval.before_training=false", "eval.every_steps=0", "data.max_eval_rows=8",
    "train.checkpoint_every=0", "train.log_every=1", f'output.dir="{out}"'])
result = run_recipe(recipe)
metrics = json.loads((result.run_dir / "metrics.json").read_text())
print(json.dumps({"tokens_per_s": metrics["tokens_per_s"], "train_seconds": metrics["train_seconds"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

THEIRS = r"""
import json, resource, sys, tempfile, time, torch
torch.set_num_threads(2)
import datasets
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
steps = int(sys.argv[1])
path = "build/chat/smollm2-135m-instruct"
rows = [json.loads(l) for l in open("build/chat/chatterbot-pairs.jsonl")][: steps * 4]
data = datasets.Dataset.from_list([{"prompt": r["prompt"],
    "chosen": [{"role": "assistant", "content": r["chosen"]}],
    "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
with tempfile.TemporaryDirectory() as out:
    config = DPOConfig(output_dir=out, per_device_train_batch_size=4, max_steps=steps, beta=0.1,
                       max_length=128, learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=1,
                       report_to=[], use_cpu=True, logging_steps=1, save_strategy="no", seed=42,
                       gradient_checkpointing=False, dataloader_num_workers=0)
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    trainer = DPOTrainer(model=model, args=config, processing_class=tok, train_dataset=data,
                         peft_config=peft_config)
    result = trainer.train()
    tokens = trainer._total_train_tokens
print(json.dumps({"tokens_per_s": tokens / result.metrics["train_runtime"],
                  "train_seconds": result.metrics["train_runtime"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    try:
        import trl
    except ImportError:
        print("TRL is not importable: pip install --no-deps --target DIR trl; PYTHONPATH=DIR")
        return 2
    load_before = os.getloadavg()[0]
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as out:
        ours = run(OURS, str(args.steps), str(Path(out) / "run"))
    theirs = run(THEIRS, str(args.steps))
    print(f"dpo_speed_vs_trl {began}, load {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"trl {trl.__version__}; {args.steps} steps of 4 pairs, SmolLM2-135M fp32 + LoRA r 8, 2 threads")
    for name, r in (("pefttool", ours), ("TRL DPOTrainer", theirs)):
        print(f"  {name:15s} {r['tokens_per_s']:8.1f} tokens/s over {r['train_seconds']:.1f} s; "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB")
    speed, memory = ours["tokens_per_s"] / theirs["tokens_per_s"], ours["peak_rss_mib"] / theirs["peak_rss_mib"]
    print(f"  tokens/s ratio {speed:.2f}x (goal >= 1.2x): {'met' if speed >= 1.2 else 'NOT met'}; "
          f"peak RSS ratio {memory:.2f}x (goal <= 0.8x): {'met' if memory <= 0.8 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
