"""The next-token loss without the logits tensor: `train.loss_chunks`.

A causal LM's forward makes batch × length × vocabulary logits (768 MiB in float32 for SmolLM2
at 8 × 512), and the loss keeps a copy of them and their gradient for backward: after gradient
checkpointing they are most of a step's memory. The chunked head computes the same loss from
the final hidden states instead: only the positions whose next token carries a label (a
prompt's tokens need no logits at all), through the model's own output layer (a tied,
LoRA'd or quantized `lm_head` as it is), a few thousand tokens at a time, each chunk's logits
recomputed in backward (`torch.utils.checkpoint`), so no more than one chunk's logits exist at
once. Pure PyTorch: CPU and CUDA, every strategy, packed rows (the labels say where a packed
example starts). In the spirit of TRL's fused LM head, Liger's fused linear cross-entropy and
torchtune's chunked CE.

    set_loss_chunks(model, 8)     # the model's forward with `labels` now returns ChunkedOutput
    out = model(**batch)          # out.loss: mean over label tokens, as the model's own loss
    out.token_logps               # (rows, length - 1): each label token's log-probability

The head is installed on the Hugging Face model instance (under PEFT's and DDP's wrappers,
which keep calling it), so the engine, the evaluation and a task's own loss all go through it;
a forward without labels (generation) is the model's own.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers.utils import ModelOutput

from .data.common import IGNORE_INDEX

_ATTR = "_pefttool_loss_chunks"
#: the fewest label tokens a chunk holds: below it a chunk's own overhead (a checkpoint, a
#: small matmul) costs more time than its logits cost memory (256 x a 128k vocabulary in
#: float32: 128 MiB). A batch of fewer label tokens is one chunk.
MIN_CHUNK_TOKENS = 256


@dataclass
class ChunkedOutput(ModelOutput):
    """A causal LM's forward with labels through the chunked head. There are no logits."""

    loss: torch.Tensor | None = None
    token_logps: torch.Tensor | None = None   # (rows, length - 1); 0 where the label is ignored
    label_mask: torch.Tensor | None = None    # (rows, length - 1); the tokens that carry a label


def hf_model(model: Any) -> Any:
    """The Hugging Face model under PEFT's (and DDP's) wrappers."""
    model = getattr(model, "module", model)
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def why_not_chunked(model: Any) -> str | None:
    """Why this model's loss cannot go through the chunked head, or None."""
    hf = hf_model(model)
    prefix = getattr(hf, "base_model_prefix", "")
    if not prefix or getattr(hf, prefix, None) is None:
        return f"{type(hf).__name__} names no backbone (base_model_prefix)"
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        return f"{type(hf).__name__} has no output layer to chunk"
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    if getattr(config, "output_router_logits", False):
        return "a mixture-of-experts model adds its router loss to the model's own"
    return None


def set_loss_chunks(model: Any, chunks: int) -> None:
    """Route the model's forward with labels through the chunked head in `chunks` token chunks
    (0: the model's own forward, full logits). Installs the head on first use."""
    hf = hf_model(model)
    if not hasattr(hf, _ATTR):
        _install(hf)
    setattr(hf, _ATTR, chunks)


def loss_chunks_of(model: Any) -> int:
    return getattr(hf_model(model), _ATTR, 0)


def _install(hf: Any) -> None:
    original = hf.forward
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)

    @functools.wraps(type(hf).forward)  # generate() checks its keyword arguments against it
    def forward(self: Any, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
        chunks = getattr(self, _ATTR, 0)
        if labels is None or not chunks:
            return original(*args, labels=labels, **kwargs)
        kwargs.pop("logits_to_keep", None)
        backbone = getattr(self, self.base_model_prefix)
        hidden = backbone(*args, **kwargs).last_hidden_state
        return chunked_causal_loss(hidden, labels, self.get_output_embeddings(), chunks,
                                   scale=scale, softcap=softcap)

    hf.forward = types.MethodType(forward, hf)


def chunked_causal_loss(hidden: torch.Tensor, labels: torch.Tensor, head: Any, chunks: int,
                        scale: float | None = None, softcap: float | None = None) -> ChunkedOutput:
    """The next-token loss of `hidden` (rows × length × width, the backbone's last hidden
    states) against `labels` (rows × length, IGNORE_INDEX where no loss), through `head`,
    in `chunks` chunks of the label tokens."""
    hidden, targets = hidden[:, :-1], labels[:, 1:].to(hidden.device)
    mask = targets != IGNORE_INDEX
    compact = hidden.device.type != "meta"   # (plan counts on the meta device: every position)
    if compact:
        picked, picked_targets = hidden[mask], targets[mask]
    else:
        picked, picked_targets = hidden.reshape(-1, hidden.shape[-1]), targets.clamp(min=0).reshape(-1)
    n = picked.shape[0]
    # (plan counts a small reference batch and scales it: there, a chunk is n / chunks, as in
    # the real batch it stands for, which holds far more than MIN_CHUNK_TOKENS)
    size = max(1, MIN_CHUNK_TOKENS if compact else 1, -(-n // max(1, chunks)))
    splits = list(zip(picked.split(size), picked_targets.split(size)))
    if not compact:
        # `pefttool plan` counts what a step allocates, as if all of it lived at once: one
        # chunk's logits stand for them all (each is freed before the next is made).
        splits = splits[:1] + [(h.new_empty(0, h.shape[-1]), t[:0]) for h, t in splits[1:]]
    pieces = []
    for h, t in splits:
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_token_logps, head, h, t, scale, softcap, use_reentrant=False))
        else:
            pieces.append(_token_logps(head, h, t, scale, softcap))
    logps = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    if compact:
        # masked_scatter keeps a batch without label tokens connected to the graph (a zero loss)
        token_logps = torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device).masked_scatter(mask, logps)
    else:
        logps = torch.cat([logps, logps.new_zeros(mask.numel() - logps.shape[0])])
        token_logps = logps.view(mask.shape).masked_fill(~mask, 0)
    loss = -token_logps.sum() / mask.sum().clamp(min=1)
    return ChunkedOutput(loss=loss, token_logps=token_logps, label_mask=mask)


def _token_logps(head: Any, hidden: torch.Tensor, targets: torch.Tensor, scale: float | None,
                 softcap: float | None) -> torch.Tensor:
    """log p(target) of each row of `hidden`: target logit − logsumexp, in float32 (on CPU,
    float32 `log_softmax` drifts by ~5e-5 per token over a 49k vocabulary where logsumexp
    stays within ~1e-5 of float64: benchmarks/dpo_vs_trl.py)."""
    logits = head(hidden)
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
