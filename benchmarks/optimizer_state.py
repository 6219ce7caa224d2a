"""Optimizer state memory: 8-bit AdamW (bitsandbytes) against fp32 AdamW on the same model.

    python benchmarks/optimizer_state.py [MODEL_DIR]

Builds each optimizer the way a run does (pefttool.optim, full fine-tuning's parameter groups),
takes one step so the state exists, and prints the bytes of state tensors. Without MODEL_DIR it
uses a BERT-shaped model built from a config (MiniLM-sized: 6 layers × 384), no download.
Goal from issue 12: 8-bit ≤ 0.3 × fp32.
"""

from __future__ import annotations

import sys

import torch


def build_model(path: str | None) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification, BertConfig

    if path:
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, vocab_size=30522, num_labels=2)
    return AutoModelForSequenceClassification.from_config(config)


def measure(name: str, path: str | None) -> tuple[int, int]:
    from pefttool.optim import default_param_groups, make_optimizer, state_bytes

    torch.manual_seed(0)
    model = build_model(path)
    optimizer = make_optimizer(name, default_param_groups(model, 0.01), 1e-4)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    params = sum(p.numel() for p in model.parameters())
    return state_bytes(optimizer), params


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else None
    fp32, params = measure("adamw", path)
    eight, _ = measure("adamw_8bit", path)
    print(f"model: {path or 'BERT config 6x384 (MiniLM-sized)'}, {params / 1e6:.1f} M parameters")
    print(f"adamw       state: {fp32 / 2**20:8.1f} MiB ({fp32 / params:.2f} bytes/param)")
    print(f"adamw_8bit  state: {eight / 2**20:8.1f} MiB ({eight / params:.2f} bytes/param)")
    ratio = eight / fp32
    print(f"ratio 8-bit / fp32: {ratio:.3f} (goal <= 0.3: {'met' if ratio <= 0.3 else 'NOT met'})")


if __name__ == "__main__":
    main()
