"""The strategy contract: how a method (full, LoRA, QLoRA, a plugin's own) wraps a model.

A plugin registers a `Strategy` through the `pefttool_register_strategies` hook. The engine
calls its methods in this order, each documented below:

    Options.model_validate(...)  →  check()  →  load_kwargs()  →  from_pretrained(**kwargs)
    →  wrap()  →  describe()  →  param_groups()  →  make_optimizer()
    →  (each micro-batch: prepare_batch()  →  model(**batch)  →  compute_loss())  →  save()

`pefttool plan` (no weights load) asks quantized_layout() and wrap_for_estimate() on a meta model;
and, when a finished run's model loads to answer (predict, generate, Try it):
    load_kwargs()  →  from_pretrained(**kwargs)  →  for_inference()  →  the saved adapter on top

Every method has a default, so a strategy overrides only what its method needs: BitFit only
`wrap`; LoRA+ `wrap` and `param_groups`; GaLore `make_optimizer`; a distillation or
label-smoothing method `compute_loss`; an augmentation `prepare_batch`. Methods only gain
(keyword) arguments over time, never lose them.

Strategy behaviour lives on the registered object, not in first-answer-wins hooks, so two
plugins can never silently fight over the same model: each strategy name has exactly one
owner, and a second registration of a name is an error naming both plugins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

    from .recipe import Recipe


class StrategyOptions(BaseModel):
    """Base for a strategy's options (the recipe's `[method]` keys other than `strategy`)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class QuantizedLayout:
    """How a strategy stores the base's linear layers, for `pefttool plan`'s memory model
    (no weights load): 4-bit in bitsandbytes' layout, matmuls computed in `compute_dtype`,
    the modules named in `keep` (and their children) left in full precision."""

    format: str               # "nf4" | "fp4"
    double_quant: bool
    compute_dtype: str        # "float32" | "bfloat16"
    keep: tuple[str, ...] = ()


class Strategy:
    """Subclass this, set `name`, `description` and `Options`, and override what you need."""

    name: str = ""
    description: str = ""
    Options: type[StrategyOptions] = StrategyOptions
    #: set by the plugin host: the plugin (distribution or module) that registered it
    plugin: str = ""
    #: `pefttool plan` shows this strategy beside the recipe's own (the built-ins set it)
    compare_in_plan: bool = False
    #: `param_groups` leaves some trainable parameters out on purpose (else that is an error)
    partial_param_groups: bool = False
    #: a method for fitting a big model in little memory: where the task trains on long
    #: sequences (causal LM), gradient checkpointing then defaults to on
    memory_first: bool = False
    #: `wrap` trains the recipe's `model.adapter` further (`pefttool.adapters.add_lora` does);
    #: without it a recipe naming one is refused before anything loads
    continues_adapter: bool = False

    def check(self, recipe: Recipe, options: Any) -> None:
        """Called before anything loads; raise `PefttoolError` if this machine cannot run it
        (a missing library, say). Default: nothing to check."""

    def load_kwargs(self, recipe: Recipe, options: Any) -> dict[str, Any]:
        """Extra keyword arguments for `from_pretrained` (e.g. `quantization_config`).
        Default: none."""
        return {}

    def wrap(self, model: torch.nn.Module, recipe: Recipe, options: Any) -> torch.nn.Module:
        """Return the model to train (adapters added, layers frozen...). Default: train all."""
        return model

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        """Parameter counts and memory of the wrapped model, reported at start."""
        total = trainable = nbytes = 0
        states: dict[int, Any] = {}
        for p in model.parameters():
            n = _logical_numel(p)
            total += n
            nbytes += p.numel() * p.element_size()
            if p.requires_grad:
                trainable += n
            state = getattr(p, "quant_state", None)
            if state is not None:
                states[id(state)] = state
        nbytes += sum(b.numel() * b.element_size() for b in model.buffers())
        nbytes += sum(_quant_state_bytes(s) for s in states.values())
        return {"params_total": total, "params_trainable": trainable,
                "model_memory_mb": round(nbytes / 2**20, 1)}

    def param_groups(self, model: torch.nn.Module, recipe: Recipe,
                     options: Any) -> list[dict[str, Any]] | None:
        """Called once after `wrap`, before the optimizer is built. Return torch optimizer
        parameter groups (`{"params": [...], "lr": ..., "weight_decay": ...}`; a group without
        `lr` gets `train.lr`) covering the parameters to train, or None for the default: the
        trainable matrices with `train.weight_decay`, biases and norms without."""
        return None

    def make_optimizer(self, param_groups: list[dict[str, Any]], recipe: Recipe,
                       options: Any) -> torch.optim.Optimizer | None:
        """Called once, with the groups from `param_groups`. Return your own optimizer over
        them, or None for the recipe's `train.optimizer` (the default). The learning-rate
        schedule (`train.scheduler`) is applied to whatever you return."""
        return None

    def prepare_batch(self, batch: dict[str, Any], recipe: Recipe, options: Any) -> dict[str, Any]:
        """Called on every training micro-batch (already on the device) before the forward
        pass. Return the batch to use (change it, or add keys your `compute_loss` reads, but
        keep the keys the model needs). Default: the batch unchanged."""
        return batch

    def compute_loss(self, outputs: Any, batch: dict[str, Any], recipe: Recipe,
                     options: Any) -> torch.Tensor | None:
        """Called on every training micro-batch with the model's outputs (`outputs.logits`,
        `outputs.loss`) and the batch. Return a scalar loss tensor to backpropagate, or None
        for the model's own loss (the default). Evaluation always uses the model's loss."""
        return None

    def quantized_layout(self, recipe: Recipe, options: Any) -> QuantizedLayout | None:
        """For `pefttool plan`: how the base's linear layers are stored, when this strategy
        quantizes them on load (its `load_kwargs`). Default: None (kept as loaded)."""
        return None

    def wrap_for_estimate(self, model: torch.nn.Module, recipe: Recipe, options: Any) -> torch.nn.Module:
        """For `pefttool plan`: `wrap` on a model whose tensors are on PyTorch's `meta` device
        (shapes only). Override when `wrap` needs real weights (a quantized base): return a
        model with the same trainable parameters. Default: `wrap`."""
        return self.wrap(model, recipe, options)

    def for_inference(self, model: torch.nn.Module, recipe: Recipe, options: Any) -> torch.nn.Module:
        """Called when a finished run's base model is loaded to answer (predict, generate,
        the TUI's Try it), before its adapter is applied: return the model to use (e.g. with a
        kernel switched off that would be wrong here). Default: the model unchanged."""
        return model

    def save(self, model: torch.nn.Module, out_dir: Path, recipe: Recipe, options: Any) -> None:
        """Write what was trained so stock transformers/PEFT load it. Default: the full model."""
        # a transformers/PEFT model; torch types it as a Module
        model.save_pretrained(out_dir, safe_serialization=True)  # type: ignore[operator]


def _logical_numel(p: Any) -> int:
    """Parameters a tensor stands for: a 4-bit bitsandbytes weight packs two per byte, and its
    quant_state knows the real shape."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    if shape is not None:
        n = 1
        for d in shape:
            n *= int(d)
        return n
    return p.numel()


def _quant_state_bytes(state: Any) -> int:
    """Memory of a 4-bit weight's scales (absmax, code, and the nested state of double quant)."""
    import torch

    total = 0
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif hasattr(value, "absmax"):
            total += _quant_state_bytes(value)
    return total


# The methods the engine calls; an exception from one of them is the strategy's, and named so.
GUARDED_METHODS = ("check", "load_kwargs", "wrap", "describe", "param_groups", "make_optimizer",
                   "prepare_batch", "compute_loss", "for_inference", "quantized_layout",
                   "wrap_for_estimate", "save")


def _is_module(value: Any) -> bool:
    import torch

    return isinstance(value, torch.nn.Module)


def _is_mapping(value: Any) -> bool:
    from collections.abc import Mapping

    return isinstance(value, Mapping)


def _is_groups(value: Any) -> bool:
    return value is None or (isinstance(value, (list, tuple)) and all(
        _is_mapping(g) and "params" in g for g in value))


def _is_optimizer(value: Any) -> bool:
    import torch

    return value is None or isinstance(value, torch.optim.Optimizer)


def loss_problem(value: Any, method: str = "compute_loss") -> str | None:
    """What is wrong with a loss a plugin's `method` returned (a strategy's `compute_loss`, a
    task's `training_loss`); None is fine: the default loss."""
    import torch

    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        return f"returned a {type(value).__name__} from {method}: return a scalar loss tensor, or None"
    if value.ndim != 0:
        return (f"returned a loss of shape {tuple(value.shape)} from {method}: reduce it to a "
                f"scalar (e.g. .mean())")
    if not value.is_floating_point():
        return f"returned a {value.dtype} loss from {method}: return a floating-point tensor"
    if torch.is_grad_enabled() and not value.requires_grad:
        return (f"returned a loss without grad from {method} (detached, or computed under "
                f"no_grad / from .item()): build it from the model's outputs so it backpropagates")
    return None


# What each method must return, and the fix to say when it does not (a value's type is named,
# never its repr: a model's repr is dozens of lines).
RETURNS: dict[str, tuple[Any, str]] = {
    "wrap": (_is_module, "return the model to train (a torch.nn.Module)"),
    "wrap_for_estimate": (_is_module, "return the wrapped model (a torch.nn.Module)"),
    "for_inference": (_is_module, "return the model to use (a torch.nn.Module)"),
    "load_kwargs": (_is_mapping, "return a dict of from_pretrained keyword arguments ({} for none)"),
    "describe": (_is_mapping, "return a dict (params_total, params_trainable, model_memory_mb)"),
    "prepare_batch": (_is_mapping, "return the batch (a dict of the model's inputs)"),
    "param_groups": (_is_groups, "return a list of {'params': [...], ...} groups, or None for the default"),
    "make_optimizer": (_is_optimizer, "return a torch.optim.Optimizer, or None for train.optimizer"),
    "quantized_layout": (lambda v: v is None or isinstance(v, QuantizedLayout),
                         "return a pefttool.strategy.QuantizedLayout, or None"),
}


class GuardedStrategy:
    """A strategy as the engine calls it: an exception that is not a `PefttoolError` becomes
    `strategy 'NAME' (PLUGIN) failed in METHOD: ...`, and a result of the wrong kind (None from
    `wrap`, a loss without grad...) `strategy 'NAME' (PLUGIN) returned ... from METHOD: FIX`;
    exit 2 before training and 3 during it (a bug in a plugin is not pefttool's 'internal
    error', and the message says whose it is)."""

    def __init__(self, strategy: Strategy):
        self.strategy = strategy
        self.during_training = False

    def problem(self, text: str) -> Exception:
        """A one-line error naming this strategy and its plugin (exit 2, or 3 in training)."""
        from .errors import PluginError

        error = PluginError(f"strategy '{self.strategy.name}' ({self.strategy.plugin or 'unknown plugin'}) "
                            f"{text}")
        error.exit_code = 3 if self.during_training else 2
        return error

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.strategy, name)
        if name not in GUARDED_METHODS or not callable(attr):
            return attr

        # The plugin's own answer (its class's method, or one set on the instance), not the default
        traced = getattr(attr, "__func__", attr) is not getattr(Strategy, name, None)

        def call(*args: Any, **kwargs: Any) -> Any:
            from .errors import PefttoolError
            from .tracing import trace, tracing

            began = time.perf_counter()
            try:
                result = attr(*args, **kwargs)
            except PefttoolError:
                raise
            except Exception as exc:
                text = " ".join(str(exc).split())
                raise self.problem(f"failed in {name}: {type(exc).__name__}: {text[:300]}") from exc
            finally:
                if traced and tracing():  # only the methods the plugin itself answers
                    trace(f"{self.strategy.name}.{name}", self.strategy.plugin or "?", began)
            if not traced:
                return result  # pefttool's own default: right by construction
            if name == "compute_loss":
                why = loss_problem(result)
                if why:
                    raise self.problem(why)
            elif name in RETURNS and not RETURNS[name][0](result):
                what = "None" if result is None else f"a {type(result).__name__}"
                raise self.problem(f"returned {what} from {name}: {RETURNS[name][1]}")
            return result

        return call
