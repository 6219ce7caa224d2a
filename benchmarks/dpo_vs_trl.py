"""DPO side by side with TRL's DPOTrainer (issue 26, item 6: the maths part).

    PYTHONPATH=/path/to/trl-site python benchmarks/dpo_vs_trl.py [--pairs 4] [--beta 0.1]

TRL is not a dependency: install it apart (`pip install --no-deps --target DIR trl`) and put
DIR on PYTHONPATH. Needs `make chat-data` (SmolLM2-135M-Instruct as safetensors and the
chatterbot preference pairs). What it does, on this CPU:

1. The first `--pairs` pairs of build/chat/chatterbot-pairs.jsonl, in TRL's conversational
   layout (prompt messages; chosen/rejected as one assistant message each) for TRL, and as
   pefttool reads them through recipes/dpo-lora.toml (its chat-template rendering).
2. One PEFT LoRA model (the recipe's r/alpha/targets) whose adapter B matrices are set to
   seeded random values, so policy and reference differ (a fresh adapter would tie them).
3. The token ids of each side's rows compared; then on that one model, TRL's `_compute_loss`
   on TRL's batch and pefttool's `score_batch` on pefttool's batch: the loss, and the chosen
   and rejected log-probabilities (TRL's logps/chosen, logps/rejected), with |difference|.

It prints what it measured and against what; it exits 1 when a difference exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.1)
    args = parser.parse_args()
    os.chdir(REPO)
    try:
        import trl
        from trl import DPOConfig, DPOTrainer
    except ImportError:
        print("TRL is not importable: pip install --no-deps --target DIR trl; PYTHONPATH=DIR")
        return 2
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pefttool.data import prepare_data
    from pefttool.recipe import load_recipe
    from pefttool_preference import score_batch

    from pefttool.losses import set_loss_chunks
    from pefttool.settled import settle

    torch.set_num_threads(2)
    load = os.getloadavg()[0]
    recipe = load_recipe(REPO / "recipes" / "dpo-lora.toml", [
        f"task.beta={args.beta}", f"data.max_train_rows={args.pairs}", "data.eval_fraction=0.5",
        "data.max_length=512", "data.drop_duplicates=false"])
    tok = AutoTokenizer.from_pretrained(recipe.model.path)
    data = prepare_data(recipe, tok, log=lambda _: None)
    ours = [data.train[i] for i in range(len(data.train))]
    # the same pairs for TRL, in its conversational layout (the rows pefttool kept, in its order)
    rows = [json.loads(line) for line in (REPO / "build/chat/chatterbot-pairs.jsonl").read_text().splitlines()]
    by_ids = {}
    for row in rows:
        msgs = row["prompt"]
        text = tok.apply_chat_template(msgs + [{"role": "assistant", "content": row["chosen"]}], tokenize=False)
        by_ids[tuple(tok(text, add_special_tokens=False)["input_ids"])] = row
    trl_rows = []
    for r in ours:
        match = next((row for ids, row in by_ids.items() if list(ids[:len(r["input_ids"])]) == r["input_ids"]), None)
        if match is None:
            print("could not find a pefttool row among the pairs"); return 1
        trl_rows.append({"prompt": match["prompt"], "chosen": [{"role": "assistant", "content": match["chosen"]}],
                         "rejected": [{"role": "assistant", "content": match["rejected"]}]})

    chunks = settle(recipe).loss_chunks
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(recipe.model.path, dtype=torch.float32)
    options = recipe.strategy_options
    model = get_peft_model(base, LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=0.0,
                                            target_modules=list(options.target_modules), task_type="CAUSAL_LM"))

    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(output_dir=out, per_device_train_batch_size=len(trl_rows), beta=args.beta,
                           max_length=512, report_to=[], use_cpu=True, logging_steps=1,
                           gradient_checkpointing=False, dataset_num_proc=None)
        trainer = DPOTrainer(model=model, ref_model=None, args=config, processing_class=tok,
                             train_dataset=datasets.Dataset.from_list(trl_rows))
        model = trainer.model   # (the model as TRL holds it; its adapter's B set after TRL set it up)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                # the trained adapter only: TRL keeps a copy of a model's existing adapter
                # under the name "ref" as the reference (it must stay as it was: B = 0, the base)
                if "lora_B" in name and ".default." in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        trl_set = trainer.train_dataset
        same_ids = all(
            list(trl_set[i]["prompt_ids"]) + list(trl_set[i]["chosen_ids"]) == ours[i]["input_ids"]
            and list(trl_set[i]["prompt_ids"]) + list(trl_set[i]["rejected_ids"]) == ours[i]["rejected_input_ids"]
            for i in range(len(ours)))
        # One pair per batch: TRL left-pads prompts of different lengths, and the model then
        # places the real tokens at other positions (position_ids are not taken from the mask),
        # which moves its log-probs by ~1e-3; a single pair has no padding on either side.
        figures = []
        trl_s = our_s = 0.0
        for i in range(min(len(ours), int(os.environ.get("PAIRS_SHOWN", len(ours))))):
            batch = trainer.data_collator([trl_set[i]])
            batch = {k: v for k, v in batch.items() if hasattr(v, "to")}
            model.train()
            began = time.perf_counter()
            trl_loss = trainer._compute_loss(trainer.model, batch, False).item()
            trl_s += time.perf_counter() - began
            m = trainer._metrics["train"]
            trl_chosen, trl_rejected = m["logps/chosen"][-1], m["logps/rejected"][-1]
            began = time.perf_counter()
            set_loss_chunks(model, chunks)   # as a run computes them (the chunked head)
            scores, our_loss = score_batch(model, data.collate([ours[i]]), recipe.task_options)
            set_loss_chunks(model, 0)        # (TRL's own passes: the model's forward)
            our_s += time.perf_counter() - began
            figures.append([(trl_loss, our_loss.item()), (trl_chosen, scores.chosen_logps.item()),
                            (trl_rejected, scores.rejected_logps.item()),
                            (m["rewards/chosen"][-1], scores.chosen_rewards.item()),
                            (m["rewards/rejected"][-1], scores.rejected_rewards.item())])

    print(f"dpo_vs_trl {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load:.2f}; "
          f"trl {trl.__version__}; {len(ours)} pairs of build/chat/chatterbot-pairs.jsonl, "
          f"SmolLM2-135M-Instruct + LoRA r {options.r} (B seeded random), beta {args.beta}; "
          f"pefttool's loss in {chunks} chunks (train.loss_chunks; 0: full logits)")
    print(f"token ids of every chosen and rejected row equal: {same_ids}")
    worst = 0.0
    for i, rows_out in enumerate(figures):
        for name, (a, b) in zip(("loss", "logps chosen", "logps rejected", "reward chosen", "reward rejected"), rows_out):
            worst = max(worst, abs(a - b))
            print(f"  pair {i} {name:15s} TRL {a:.6f}  pefttool {b:.6f}  |Δ| {abs(a - b):.2e}")
    print(f"  forward + reference passes: TRL {trl_s:.2f} s, pefttool {our_s:.2f} s "
          f"(one pair at a time, load {os.getloadavg()[0]:.2f}: not a speed figure)")
    ok = same_ids and worst <= TOLERANCE
    print(f"{'PASS' if ok else 'FAIL'}: ids equal and every |Δ| <= {TOLERANCE}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
