"""Optimizer construction: the recipe's `train.optimizer`, and a strategy's own groups/optimizer.

    groups = strategy.param_groups(model, recipe, options)   # None → decay / no-decay groups
    optimizer = strategy.make_optimizer(groups, recipe, options)  # None → train.optimizer

The 8-bit and paged optimizers come from bitsandbytes, Adafactor from transformers; paged ones
page their state through CUDA unified memory, so they need a GPU (a recipe asking for one on a
machine without is a validation problem naming what can run here).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

    from .recipe import Recipe

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor")
NEEDS_BITSANDBYTES = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
NEEDS_CUDA = ("paged_adamw_8bit", "paged_adamw_32bit")


def optimizer_problem(name: str, device: str, cuda_available: Callable[[], bool]) -> str | None:
    """Why `train.optimizer = name` cannot run on this machine (one line), or None.
    `cuda_available` is only called for the optimizers that need a GPU (it imports torch)."""
    runnable = [o for o in OPTIMIZERS if o not in NEEDS_CUDA]
    if name in NEEDS_BITSANDBYTES and importlib.util.find_spec("bitsandbytes") is None:
        runnable = [o for o in runnable if o not in NEEDS_BITSANDBYTES]
        return (f"train.optimizer: '{name}' needs bitsandbytes, which is not installed; install "
                f"it, or use one of {', '.join(runnable)}")
    if name in NEEDS_CUDA and (device == "cpu" or not cuda_available()):
        return (f"train.optimizer: '{name}' pages its state through CUDA memory and no GPU "
                f"{'is used (train.device = cpu)' if device == 'cpu' else 'visible'}; on this machine "
                f"use one of {', '.join(runnable)}")
    return None


def default_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: matrices decay, biases and norms do not."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names over `groups` (a group's own lr wins over `lr`)."""
    groups = [g for g in groups if list(g["params"])]
    if name == "adamw":
        import torch

        # The fused kernel (Trainer's default since torch 2.8): on CPU the optimizer step of a
        # full MiniLM fine-tune took 32 ms against the default foreach kernel's 172 ms.
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not cover
            return torch.optim.AdamW(groups, lr=lr)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # A fixed learning rate, as the recipe's scheduler expects (not Adafactor's own schedule).
        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    from .adapters import quiet_bitsandbytes_import

    with quiet_bitsandbytes_import():
        import bitsandbytes as bnb
    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
           "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}[name]
    return cls(groups, lr=lr)


def build_optimizer(strategy: Any, model: torch.nn.Module, recipe: Recipe,
                    options: Any) -> torch.optim.Optimizer:
    """The run's optimizer: the strategy's groups (or the default two) and its own optimizer
    (or the recipe's `train.optimizer`). The engine passes a `GuardedStrategy`, so a strategy's
    exception names the strategy and its plugin."""
    groups = strategy.param_groups(model, recipe, options)
    if groups is None:
        groups = default_param_groups(model, recipe.train.weight_decay)
    else:
        check_groups(strategy, model, groups)
    optimizer = strategy.make_optimizer(groups, recipe, options)
    if optimizer is None:
        optimizer = make_optimizer(recipe.train.optimizer, groups, recipe.train.lr)
    return optimizer


def check_groups(strategy: Any, model: torch.nn.Module, groups: list[dict[str, Any]]) -> None:
    """A strategy's parameter groups cover every trainable parameter once: one left out would
    silently never train (the run still said "N of N parameters train"), one in two groups is
    torch's error. A strategy that means to leave some out sets `partial_param_groups = True`."""
    names = {id(p): n for n, p in model.named_parameters()}
    seen: set[int] = set()
    twice: list[str] = []
    for group in groups:
        for p in group["params"]:
            if id(p) in seen:
                twice.append(names.get(id(p), "?"))
            seen.add(id(p))
    if twice:
        raise strategy.problem(f"put {len(twice)} parameter(s) in more than one group from param_groups "
                               f"({', '.join(twice[:3])}): give each parameter one group")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing and not getattr(strategy, "partial_param_groups", False):
        raise strategy.problem(
            f"left {len(missing)} trainable parameter(s) out of param_groups ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): they would never train; add them to a group, "
            f"freeze them in wrap, or set partial_param_groups = True on the strategy if you mean it")


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of tensors the optimizer keeps per parameter (moments, 8-bit scales)."""
    import torch

    return sum(v.numel() * v.element_size() for state in optimizer.state.values()
               for v in state.values() if isinstance(v, torch.Tensor))
