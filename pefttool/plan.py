"""`pefttool plan RECIPE`: what a run will cost, before anything trains.

    estimate(recipe, device="cpu" | gpu_gib) -> Plan      # pure, no weights, ~1 s (cached after)
    data_estimate(recipe) -> DataEstimate                  # tokenizer + data pipeline, no weights
    calibrate(recipe_path, overrides, steps=5) -> Calibration   # a few real steps, extrapolated
    runtime_baseline() -> bytes                            # measured once, cached

How each figure is made (no weights are read; the model is built from its config on torch's
`meta` device, where tensors have shapes and dtypes but no storage):

* parameters: counted on the meta model after the strategy's own `wrap` (LoRA through PEFT, so
  trainable counts are PEFT's). QLoRA cannot quantize on meta: its model is the LoRA-wrapped
  meta model, and the 4-bit sizes are arithmetic (bitsandbytes' layout: 0.5 byte per weight,
  one fp32 absmax per 64-weight block, or with double quant an 8-bit absmax plus one fp32 per
  256 blocks; every other tensor in fp32, as PEFT's prepare_model_for_kbit_training leaves it).
* gradients: one per trainable parameter, in its dtype.
* optimizer state (train.optimizer, as pefttool/optim.py builds it): AdamW 2 moments in the
  parameter's dtype; bitsandbytes 8-bit: 2 bytes + a fp32 absmax per 256 values (tensors under
  4,096 values keep fp32 state, as bitsandbytes does); Adafactor (no momentum): a row and a
  column vector for matrices, a full second moment for vectors.
* activations: one forward pass of a batch of `train.batch_size × data.max_length` through the
  meta model in training mode, summing every tensor autograd saves for backward (parameters
  excluded, shared storage counted once), so dropout masks, the attention implementation
  (eager keeps the score matrices, sdpa does not), LoRA's extra inputs and the logits are all
  the model's own. Gradient checkpointing: the layer inputs, plus one layer's activations
  (recomputed in backward), plus what lives outside the layers. Batches are padded to their
  longest row, so `max_length` is the worst batch: the peak.
* other: the largest saved tensor once more (its gradient, during backward) and, with
  `train.mixed_precision = "bf16"`, autocast's bf16 copies of trainable fp32 weights.
* runtime: on CPU the process's own size before it loads anything (Python, torch,
  transformers, PEFT, Accelerate, datasets) — measured in a fresh process by
  `runtime_baseline()` and cached; on a GPU an assumed CUDA context (not measured here).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PefttoolError
from .runfolder.rundir import EVENTS_FILE
from .sampling import RunLength
from .settled import settle
from .strategy import QuantizedLayout
from .tasks import get_task

if TYPE_CHECKING:
    from .recipe import Recipe

MiB = 2**20
GiB = 2**30
QUANT_BLOCK = 64            # bitsandbytes 4-bit block size
DOUBLE_QUANT_BLOCK = 256    # blocks per second-level absmax with double quant
OPT8_BLOCK = 256            # bitsandbytes 8-bit optimizer block size
OPT8_MIN_SIZE = 4096        # smaller tensors keep fp32 state (bitsandbytes' min_8bit_size)
# Bytes a checkpoint spends per trained tensor besides its values: its safetensors header
# entry (~140) and torch.save's pickle of its optimizer state (~840); measured on a LoRA run.
CHECKPOINT_TENSOR_OVERHEAD = 1024
CUDA_CONTEXT = 512 * MiB    # assumed, not measured on this machine (no GPU here)
HEAD = -2   # _Saved's layer index of what the chunked loss's head makes (one chunk's logits)
GLIBC_MMAP_MAX = 32 * MiB   # glibc's largest dynamic mmap threshold (64-bit): bigger blocks are
                            # mmapped and returned on free; smaller ones stay in the heap
BASELINE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pefttool" / "runtime-baseline.json"


# ---------------------------------------------------------------- results


@dataclass
class Memory:
    """Estimated peak bytes, by part. `capacity` is the device's size when one was given."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    other: int
    runtime: int
    capacity: int | None = None

    def parts(self) -> dict[str, int]:
        return {"runtime": self.runtime, "weights": self.weights, "gradients": self.gradients,
                "optimizer": self.optimizer, "activations": self.activations, "other": self.other}

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.total <= self.capacity

    @property
    def headroom(self) -> int | None:
        return None if self.capacity is None else self.capacity - self.total

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self.parts().items()}
        out["total"] = self.total
        if self.capacity is not None:
            out.update(capacity=self.capacity, fits=self.fits, headroom=self.headroom)
        return out


@dataclass
class StrategyEstimate:
    strategy: str
    params_total: int
    params_trainable: int
    cpu: Memory
    gpu: Memory | None
    gradient_checkpointing: bool
    own: bool = False
    note: str = ""
    trainable_dtype: str = ""      # as the run's start event reports it
    # One checkpoint on disk: the trainable tensors (the whole model when every parameter
    # trains) plus the optimizer state; the RNG, scheduler and trainer state add ~20 KB.
    checkpoint: int = 0
    # `cpu` and `gpu` are the run's peak: the training step's or the evaluation's, whichever is
    # larger. Both phases' totals, by device ("cpu", "gpu"), as {"training": b, "evaluation": b}.
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    by_phase: dict[tuple[str, str], Memory] = field(default_factory=dict, repr=False)

    def peak_phase(self, device: str = "cpu") -> str:
        totals = self.phases.get(device, {})
        return max(totals, key=lambda k: totals[k]) if totals else "training"

    def memory(self, phase: str, device: str = "cpu") -> Memory | None:
        """One phase's figures ("training" or "evaluation") on "cpu" or "gpu"."""
        return self.by_phase.get((phase, device))

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "own": self.own, "params_total": self.params_total,
                "params_trainable": self.params_trainable,
                "gradient_checkpointing": self.gradient_checkpointing, "checkpoint": self.checkpoint,
                "trainable_dtype": self.trainable_dtype,
                "cpu": self.cpu.to_dict(), "gpu": self.gpu.to_dict() if self.gpu else None,
                "phases": self.phases, "note": self.note}


@dataclass
class DataEstimate:
    train_rows: int
    eval_rows: int
    steps_per_epoch: int
    total_steps: int
    tokens_per_epoch: int          # real (non-pad) tokens
    padded_tokens_per_epoch: int   # what the model computes on, batches in a seeded random order
    mean_length: float
    max_length_seen: int
    truncated_rows: int
    method: str                    # "encoded every row" or "sampled N of M rows"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Calibration:
    steps: int
    sec_per_step: float
    setup_s: float
    peak_rss: int
    estimated_train_s: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    recipe: str
    strategy: str
    model: str
    task: str
    dtype: str
    optimizer: str
    mixed_precision: str
    attention: str
    batch_size: int
    max_length: int
    grad_accum: int
    rows: list[StrategyEstimate]
    gpu_gib: float | None = None
    data: DataEstimate | None = None
    calibration: Calibration | None = None
    assumptions: list[str] = field(default_factory=list)

    @property
    def own(self) -> StrategyEstimate:
        return next(r for r in self.rows if r.own)

    def row(self, strategy: str) -> StrategyEstimate | None:
        return next((r for r in self.rows if r.strategy == strategy), None)

    def summary(self, strategy: str | None = None) -> str:
        """One line for a status bar: trainable parameters and the peaks of one strategy."""
        r = self.row(strategy) if strategy else self.own
        if r is None:
            return f"{strategy}: not estimated"
        text = (f"{r.strategy}: {_count(r.params_trainable)} trainable of {_count(r.params_total)}; "
                f"CPU peak ≈ {_mib(r.cpu.total)}")
        if r.gpu is not None:
            text += (f"; GPU {self.gpu_gib:g} GiB: ≈ {_mib(r.gpu.total)}, "
                     f"{'fits' if r.gpu.fits else 'does NOT fit'} ({_mib(r.gpu.headroom)} headroom)")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "strategy": self.strategy, "model": self.model,
                "task": self.task, "dtype": self.dtype, "optimizer": self.optimizer,
                "mixed_precision": self.mixed_precision, "attention": self.attention,
                "batch_size": self.batch_size, "max_length": self.max_length,
                "grad_accum": self.grad_accum, "gpu_gib": self.gpu_gib,
                "strategies": [r.to_dict() for r in self.rows],
                "data": self.data.to_dict() if self.data else None,
                "calibration": self.calibration.to_dict() if self.calibration else None,
                "assumptions": self.assumptions, "units": "bytes"}


# ---------------------------------------------------------------- the runtime baseline

_BASELINE_PROBE = """
import resource, json, warnings, logging
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
import torch, transformers, peft, accelerate, datasets, tokenizers
from transformers import AutoModelForSequenceClassification, AutoModelForCausalLM, AutoTokenizer
import pefttool.engine, pefttool.data
print(json.dumps({"maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _stack_key() -> str:
    versions = []
    for dist in ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            versions.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist}=none")
    return f"{sys.executable}|{sys.version.split()[0]}|{'|'.join(versions)}"


def runtime_baseline(refresh: bool = False) -> int:
    """Peak RSS (bytes) of a fresh Python that imports the training stack and loads nothing:
    the floor under every CPU run's peak. Measured once per Python + library versions and
    cached in ~/.cache/pefttool/runtime-baseline.json (a few seconds the first time)."""
    key = _stack_key()
    if not refresh:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            cached = json.loads(BASELINE_CACHE.read_text(encoding="utf-8"))
            if cached["key"] == key:
                return int(cached["bytes"])
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", _BASELINE_PROBE], capture_output=True,
                            text=True, env=env, timeout=300)
    if result.returncode != 0:
        raise PefttoolError(f"plan: measuring the runtime baseline failed: "
                            f"{(result.stderr.strip().splitlines() or ['?'])[-1]}")
    value = int(json.loads(result.stdout.strip().splitlines()[-1])["maxrss"])
    with contextlib.suppress(OSError):
        BASELINE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        BASELINE_CACHE.write_text(json.dumps({"key": key, "bytes": value}), encoding="utf-8")
    return value


# ---------------------------------------------------------------- the meta model


@functools.lru_cache(maxsize=8)
def _config_cached(source: str, gguf_file: str | None, trust: bool, stamp: float) -> Any:
    from transformers import AutoConfig

    from .models import quiet_transformers

    kwargs: dict[str, Any] = {"trust_remote_code": trust}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    with quiet_transformers():
        return AutoConfig.from_pretrained(source, **kwargs)


def _config(recipe: Recipe) -> Any:
    """The model's config (config.json, or a GGUF header), cached per file version."""
    from .models import _translate, check_model_source

    source, kwargs = check_model_source(recipe)
    stamp = 0.0
    if isinstance(source, Path):
        target = source / (kwargs.get("gguf_file") or "config.json")
        with contextlib.suppress(OSError):
            stamp = target.stat().st_mtime
    try:
        config = _config_cached(str(source), kwargs.get("gguf_file"), recipe.model.trust_remote_code, stamp)
    except (OSError, ValueError, KeyError, ImportError, TypeError) as exc:
        raise _translate(exc, recipe.model.path, "a config") from exc
    import copy

    return copy.deepcopy(config)


def _meta_model(recipe: Recipe, dtype: Any, attention: str | None) -> Any:
    """The recipe's model class built from its config on the meta device (no weights)."""
    import torch

    from .models import check_length_fits, quiet_transformers

    config = _config(recipe)
    check_length_fits(recipe, config)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attention:
        kwargs["attn_implementation"] = attention
    task = get_task(recipe)
    if task.has_labels:  # the head's size: the recipe's labels (two when the data names them)
        labels = list(recipe.task.labels or ["0", "1"])
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {n: i for i, n in enumerate(labels)}
    for key, value in task.model_kwargs(recipe).items():  # the task's head (num_labels=1...)
        if key == "num_labels" or hasattr(config, key):
            setattr(config, key, value)
    cls = task.auto_model_class()
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0  # decoder classifiers need one to find each row's end
    with quiet_transformers(), torch.device("meta"):
        try:
            model = cls.from_config(config, trust_remote_code=recipe.model.trust_remote_code, **kwargs)
        except (ValueError, KeyError, ImportError, TypeError) as exc:
            raise PefttoolError(f"model.path: cannot build the model of '{recipe.model.path}' "
                                f"from its config: {' '.join(str(exc).split())[:200]}") from None
    return model


def _torch_dtype(name: str, config_dtype: Any = None) -> Any:
    import torch

    if name == "auto":
        if isinstance(config_dtype, torch.dtype):
            return config_dtype
        return getattr(torch, str(config_dtype or "float32").replace("torch.", ""), torch.float32)
    return getattr(torch, name)


def _unique_params(model: Any) -> list[tuple[str, Any]]:
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        out.append((name, p))
    return out


def _storage_key(t: Any) -> int:
    try:
        return t.untyped_storage()._cdata
    except Exception:  # a tensor subclass without a plain storage
        return id(t)


def _decoder_layers(model: Any) -> list[Any]:
    """The repeated blocks (the longest ModuleList whose items are all one class)."""
    import torch

    best: list[Any] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            items = list(module)
            if items and len({type(m) for m in items}) == 1:
                best = items
    return best


@dataclass
class _Saved:
    """One training forward at REF_BATCH: every tensor it allocated, as (bytes, saved for
    backward, index of the repeated layer it was made in or -1)."""

    allocs: list[tuple[int, bool, int]]
    layers: int
    layer_input: int    # bytes of one layer's input (what checkpointing keeps per layer)

    def figures(self, scale: float, checkpointing: bool) -> tuple[int, int, int]:
        """(GPU activations, CPU activations, largest saved tensor) at `scale` × REF_BATCH.

        GPU: what autograd saves (the caching allocator reuses every freed block). CPU: what
        autograd saves plus every freed temporary under glibc's mmap threshold, because those
        stay in the heap (RSS) once freed; bigger ones are mmapped and go back to the system."""
        saved: list[float] = [0] * (self.layers + 1)
        heap: list[float] = [0] * (self.layers + 1)
        largest: float = 0
        for nbytes, is_saved, layer in self.allocs:
            size = nbytes * scale
            layer = -1 if layer == HEAD else layer   # (a loss chunk: outside the layers)
            if is_saved:
                saved[layer] += size
                largest = max(largest, size)
            elif size < GLIBC_MMAP_MAX:
                heap[layer] += size
        outside_gpu, outside_cpu = saved[-1], saved[-1] + heap[-1]
        inside_gpu = saved[:-1]
        inside_cpu = [x + y for x, y in zip(saved[:-1], heap[:-1])]
        if checkpointing and self.layers:
            keep = self.layers * self.layer_input * scale
            return (round(outside_gpu + keep + max(inside_gpu)),
                    round(outside_cpu + keep + max(inside_cpu)), round(largest))
        return round(outside_gpu + sum(inside_gpu)), round(outside_cpu + sum(inside_cpu)), round(largest)

    def retained_heap(self, scale: float, checkpointing: bool) -> int:
        """What a training step leaves in glibc's heap at `scale` × REF_BATCH: its blocks under
        the mmap threshold, saved or not, stay resident once freed (the CPU figure without the
        large, mmapped tensors, which go back to the system)."""
        small = _Saved([a for a in self.allocs if a[0] * scale < GLIBC_MMAP_MAX], self.layers, self.layer_input)
        return small.figures(scale, checkpointing)[1]

    def live_peak(self, scale: float) -> tuple[int, int, int]:
        """An evaluation forward's peak at `scale` × REF_BATCH (counted under no_grad, so nothing
        is saved), as (blocks under glibc's mmap threshold, larger ones): everything made outside
        the repeated layers (embeddings, the head's logits and the loss's copies of them, alive
        together at the loss) plus the largest layer's temporaries (one layer runs at a time),
        or a chunk of the chunked loss where it is larger (made after the layers). A third
        figure: the same over blocks of every size (a GPU's allocator does not tell them apart)."""
        out = []
        for large in (False, True, None):
            allocs = [(n, layer) for n, _, layer in self.allocs
                      if large is None or (n * scale >= GLIBC_MMAP_MAX) == large]
            per_layer = [0] * self.layers
            for n, layer in allocs:
                if layer >= 0:
                    per_layer[layer] += n
            outside = sum(n for n, layer in allocs if layer == -1)
            # a chunk of the chunked loss: made after the last layer's temporaries are freed
            head = sum(n for n, layer in allocs if layer == HEAD)
            out.append(round((outside + max(*per_layer, head, 0)) * scale))
        return out[0], out[1], out[2]


# Ops whose output shares its input's storage (no new memory).
_NO_ALLOC = ("view", "_unsafe_view", "t", "transpose", "expand", "permute", "unsqueeze", "slice",
             "select", "detach", "as_strided", "split", "split_with_sizes", "squeeze", "alias",
             "reshape", "unbind", "chunk", "narrow", "expand_as", "view_as", "lift_fresh")


def _alloc_counter(on_alloc: Any) -> Any:
    """A TorchDispatchMode calling `on_alloc(bytes)` for each new tensor an op returns."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            schema = func._schema
            if schema.is_mutable or schema.name.split("::")[-1] in _NO_ALLOC:
                return out
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    on_alloc(t)
            return out

    return _Count()


@contextlib.contextmanager
def _fused_sdpa() -> Any:
    """On the meta device sdpa falls back to its math form (it keeps the score matrices); on
    CPU and GPU without attention dropout a fused kernel runs, which keeps only q, k, v, the
    output and a log-sum-exp row. Route dropout-free sdpa calls to that kernel's meta form."""
    import torch
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False):  # noqa: ANN001
        if query.device.type != "meta" or dropout_p > 0:
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                            is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            repeat = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(repeat, dim=-3)
            value = value.repeat_interleave(repeat, dim=-3)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, bool(is_causal), attn_mask=attn_mask, scale=scale)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _saved_activations(model: Any, recipe: Recipe, batch: int, length: int,
                       training: bool = True) -> _Saved:
    """Run one training forward on the meta device; record every tensor it allocates and
    which of them autograd saves for backward (parameters excluded, shared storage once).
    `training=False`: an evaluation forward instead (eval mode, no_grad: nothing is saved)."""
    import torch

    params = {_storage_key(p) for p in model.parameters()}
    params |= {_storage_key(b) for b in model.buffers()}
    layers = _decoder_layers(model)
    current = [-1]
    alive: list[Any] = []           # keeps storages alive, so their keys stay unique
    made: dict[int, list[Any]] = {}  # storage key -> [bytes, saved, layer]
    first_input = [0]

    def pack(t: Any) -> Any:
        key = _storage_key(t)
        if key in params:
            return t
        entry = made.get(key)
        if entry is None:  # saved but not allocated by an op we saw (an input): count it
            entry = made[key] = [t.untyped_storage().nbytes() if t.device.type != "meta"
                                 else t.numel() * t.element_size(), True, current[0]]
            alive.append(t)
        entry[1] = True
        return t

    def on_alloc(t: Any) -> None:
        key = _storage_key(t)
        if key not in made:
            made[key] = [t.numel() * t.element_size(), False, current[0]]
            alive.append(t)

    handles = []
    for i, layer in enumerate(layers):
        def pre(module: Any, args: Any, kwargs: Any = None, i: int = i) -> None:
            current[0] = i
            hidden = args[0] if args else next((v for v in (kwargs or {}).values()
                                                if isinstance(v, torch.Tensor)), None)
            if hidden is not None and not first_input[0]:
                first_input[0] = hidden.numel() * hidden.element_size()

        def post(module: Any, args: Any, output: Any) -> None:
            current[0] = -1

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post))
    from .losses import hf_model, loss_chunks_of

    if loss_chunks_of(model):   # the chunked loss: each chunk's logits are made (and freed) in the head
        head = hf_model(model).get_output_embeddings()

        def head_pre(module: Any, args: Any) -> None:
            current[0] = HEAD

        def head_post(module: Any, args: Any, output: Any) -> None:
            current[0] = -1

        handles.append(head.register_forward_pre_hook(head_pre))
        handles.append(head.register_forward_hook(head_post))
    model.train(training)
    ids = torch.zeros((batch, length), dtype=torch.long, device="meta")
    inputs: dict[str, Any] = {"input_ids": ids}
    inputs["labels"] = get_task(recipe).example_labels(ids)  # one per row, or per token
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _fused_sdpa(), \
                _alloc_counter(on_alloc), torch.set_grad_enabled(training):
            model(**inputs)
    except Exception as exc:
        raise PefttoolError(f"plan: cannot run this model on the meta device to count its "
                            f"activations ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
    finally:
        for h in handles:
            h.remove()
        model.train()
    return _Saved(allocs=[(n, saved, layer) for n, saved, layer in made.values()],
                  layers=len(layers), layer_input=first_input[0])


# ---------------------------------------------------------------- per-part arithmetic


def _quantized_linear_names(model: Any, keep: set[str]) -> set[str]:
    """Names of the base Linear layers bitsandbytes would make 4-bit (not the heads, not
    LoRA's own layers, not modules_to_save copies)."""
    import torch

    out = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        parts = name.split(".")
        if any(p in keep for p in parts) or any(p.startswith(("lora_", "modules_to_save",
                                                               "original_module")) for p in parts):
            continue
        out.add(name)
    return out


def _nf4_bytes(numel: int, double_quant: bool) -> int:
    blocks = math.ceil(numel / QUANT_BLOCK)
    if double_quant:
        scales = blocks + 4 * math.ceil(blocks / DOUBLE_QUANT_BLOCK) + 2 * 256 * 4
    else:
        scales = 4 * blocks + 256 * 4
    return math.ceil(numel / 2) + scales


def _optimizer_bytes(name: str, trainable: list[tuple[int, tuple[int, ...], int]]) -> int:
    """Optimizer state bytes for trainable tensors given as (numel, shape, element size)."""
    total = 0
    for n, shape_t, size in trainable:
        if name in ("adamw", "paged_adamw_32bit"):
            total += 2 * n * size
        elif name in ("adamw_8bit", "paged_adamw_8bit"):
            total += 2 * n * 4 if n < OPT8_MIN_SIZE else 2 * (n + 4 * math.ceil(n / OPT8_BLOCK))
        elif name == "adafactor":
            if len(shape_t) >= 2:
                shape = list(shape_t)
                total += (math.prod(shape[:-1]) + math.prod(shape[:-2] + shape[-1:])) * size
            else:
                total += n * size
        else:
            total += 2 * n * size
    return total


def _options_for(recipe: Recipe, strategy: str, host: Any) -> Any:
    """The strategy's options: the recipe's own when it is that strategy, else (for the side by
    side rows) the recipe's LoRA keys that the other strategy accepts, over its defaults."""
    if strategy == recipe.method.strategy:
        return recipe.strategy_options
    Options = host.strategies[strategy].Options
    own_strategy = host.strategies.get(recipe.method.strategy)
    own = recipe.strategy_options.model_dump() if getattr(own_strategy, "compare_in_plan", False) else {}
    fields = getattr(Options, "model_fields", {})
    return Options.model_validate({k: v for k, v in own.items() if k in fields and v is not None})


@dataclass
class _ModelFacts:
    model: Any
    total: int
    trainable: list[tuple[int, tuple[int, ...], int]]   # (numel, shape, element size) each
    weights: int
    supports_gc: bool
    note: str
    trainable_dtype: str = ""


_CACHE: dict[tuple, Any] = {}
_CACHE_SIZE = 64
REF_BATCH = 2  # activations are counted at this batch and scaled: every one is linear in batch


def _cached(key: tuple, make: Any) -> Any:
    if key in _CACHE:
        value = _CACHE.pop(key)
    else:
        value = make()
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = value
    return value


def _model_key(recipe: Recipe, strategy: str, options: Any) -> tuple:
    return (recipe.model.path, recipe.model.adapter, str(recipe.base_dir), recipe.model.gguf_file, recipe.model.dtype,
            recipe.model.attn_implementation, recipe.task.type, tuple(recipe.task.labels or ()),
            strategy, options.model_dump_json())


def _model_facts(recipe: Recipe, strategy: str, options: Any, host: Any,
                 layout: QuantizedLayout | None) -> _ModelFacts:
    """The strategy's wrap on the meta model (in its load dtype), and its parameter figures."""
    import torch

    config = _config(recipe)
    dtype = _torch_dtype(recipe.model.dtype, getattr(config, "dtype", None))
    model = _meta_model(recipe, torch.float32 if layout else dtype, recipe.model.attn_implementation)
    quant_names = _quantized_linear_names(model, set(layout.keep)) if layout else set()
    try:
        with _quiet():
            model = host.strategies[strategy].wrap_for_estimate(model, recipe, options)
    except PefttoolError:
        raise
    except Exception as exc:
        raise PefttoolError(f"plan: strategy '{strategy}' cannot wrap a model on the meta device "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                            f"its memory cannot be estimated without loading weights") from None
    params = _unique_params(model)
    note = ""
    if layout:
        weights = 0
        base_prefix = _base_prefix(model)
        for name, p in params:
            module = _strip(name.rsplit(".", 1)[0], base_prefix).replace(".base_layer", "")
            if name.endswith(".weight") and module in quant_names:
                weights += _nf4_bytes(p.numel(), layout.double_quant)
            else:
                weights += p.numel() * 4
        note = (f"4-bit sizes computed from bitsandbytes' layout ({len(quant_names)} linear layers "
                f"in {layout.format}{', double quant' if layout.double_quant else ''})")
    else:
        weights = sum(p.numel() * p.element_size() for _, p in params)
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    base = getattr(getattr(model, "base_model", model), "model", model)
    return _ModelFacts(
        model=model, total=sum(p.numel() for _, p in params),
        trainable=[(p.numel(), tuple(p.shape), p.element_size()) for _, p in params if p.requires_grad],
        weights=weights, supports_gc=bool(getattr(base, "supports_gradient_checkpointing", True)),
        note=note, trainable_dtype=next((str(p.dtype).removeprefix("torch.") for _, p in params
                                         if p.requires_grad), ""))


def _estimate_strategy(recipe: Recipe, strategy: str, host: Any, gpu: int | None,
                       baseline: int) -> StrategyEstimate:
    import torch

    # The run as the engine would settle it, as this strategy (plan's side-by-side rows).
    settled = settle(recipe, host, strategy=strategy, options=_options_for(recipe, strategy, host),
                     check=False)
    options, layout = settled.options, settled.layout
    config = _config(recipe)
    dtype = _torch_dtype(recipe.model.dtype, getattr(config, "dtype", None))
    mixed = recipe.train.mixed_precision
    act_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed, dtype)
    if layout:  # the 4-bit matmuls compute in compute_dtype; the rest is fp32 (prepare_model_for_kbit_training)
        act_dtype = {"bf16": torch.bfloat16}.get(mixed, getattr(torch, layout.compute_dtype))

    key = _model_key(recipe, strategy, options)
    facts = _cached(("model", *key), lambda: _model_facts(recipe, strategy, options, host, layout))
    trainable = facts.trainable
    n_trainable = sum(n for n, _, _ in trainable)
    gradients = sum(n * size for n, _, size in trainable)
    optimizer = _optimizer_bytes(recipe.train.optimizer, trainable)

    def count(training: bool) -> _Saved:
        model = facts.model
        if next(model.parameters()).dtype != act_dtype:
            model.to(act_dtype)  # autocast: matmul outputs in bf16 (softmax/norms stay fp32: ~)
        from .losses import set_loss_chunks, why_not_chunked

        if settled.task.vocabulary_loss:   # (the cached model serves both settings)
            set_loss_chunks(model, 0 if why_not_chunked(model) else settled.loss_chunks)
        return _saved_activations(model, recipe, REF_BATCH, recipe.data.max_length, training)

    key = (*key, settled.loss_chunks)   # the chunked loss never makes the logits
    saved = _cached(("act", *key, str(act_dtype), recipe.data.max_length), lambda: count(True))
    rows_per_example = get_task(recipe).rows_per_example   # (a preference pair: two rows)
    scale = recipe.train.batch_size * rows_per_example / REF_BATCH
    checkpointing = settled.gradient_checkpointing and facts.supports_gc and saved.layers > 0
    gpu_act, cpu_act, other = saved.figures(scale, checkpointing)
    autocast_cache = 0
    if mixed == "bf16" and dtype == torch.float32:
        autocast_cache = sum(n * 2 for n, shape, _ in trainable if len(shape) >= 2)
    other += autocast_cache

    # The evaluation (before training, every eval.every, at the end): eval.batch_size rows
    # through a no_grad forward, never checkpointed; the gradients are gone (zero_grad sets
    # them to None), the weights and optimizer state stay.
    evaluated = _cached(("eval-act", *key, str(act_dtype), recipe.data.max_length), lambda: count(False))
    eval_small, eval_large, eval_all = evaluated.live_peak(recipe.eval.batch_size * rows_per_example / REF_BATCH)
    # On the CPU the training step's freed small blocks stay in the heap (RSS): the evaluation's
    # small tensors reuse them, its large ones (the logits of a big vocabulary) come on top.
    # Before the first step that heap is not there yet, but the peak is the later evaluations'.
    eval_cpu_act = max(saved.retained_heap(scale, checkpointing), eval_small) + eval_large
    # Frozen copies of the base the task keeps beside it (a preference run's reference under
    # full fine-tuning): their weights, nothing else.
    copies = get_task(recipe).frozen_models(recipe, trains_everything=n_trainable == facts.total)
    weights = facts.weights * (1 + copies)
    note = facts.note + (f"{'; ' if facts.note else ''}weights include {copies} frozen cop"
                         f"{'y' if copies == 1 else 'ies'} of the base (the task's reference)" if copies else "")
    by_phase = {("training", "cpu"): Memory(weights, gradients, optimizer, cpu_act, other, baseline),
                ("evaluation", "cpu"): Memory(weights, 0, optimizer, eval_cpu_act, autocast_cache, baseline)}
    if gpu is not None:  # the caching allocator hands the step's freed blocks to the evaluation
        by_phase["training", "gpu"] = Memory(weights, gradients, optimizer, gpu_act, other,
                                             CUDA_CONTEXT, capacity=gpu)
        by_phase["evaluation", "gpu"] = Memory(weights, 0, optimizer, eval_all,
                                               autocast_cache, CUDA_CONTEXT, capacity=gpu)
    totals: dict[str, dict[str, int]] = {}
    for (phase, device), memory in by_phase.items():
        totals.setdefault(device, {})[phase] = memory.total
    cpu = max(by_phase["training", "cpu"], by_phase["evaluation", "cpu"], key=lambda m: m.total)
    gpu_mem = (max(by_phase["training", "gpu"], by_phase["evaluation", "gpu"], key=lambda m: m.total)
               if gpu is not None else None)
    # As pefttool/runfolder/model_state.py saves: the whole model when every parameter trains, else
    # only the trainable tensors (gradients has their bytes), plus the optimizer state.
    saved_weights = facts.weights if n_trainable == facts.total else gradients
    files_overhead = CHECKPOINT_TENSOR_OVERHEAD * len(trainable)
    return StrategyEstimate(strategy, facts.total, n_trainable, cpu, gpu_mem, checkpointing,
                            own=strategy == recipe.method.strategy, note=note,
                            checkpoint=saved_weights + optimizer + files_overhead,
                            trainable_dtype=facts.trainable_dtype, phases=totals, by_phase=by_phase)


def _could_run(recipe: Recipe, strategy: str, host: Any) -> bool:
    """A side-by-side row only for a strategy whose own check accepts this recipe."""
    try:
        settle(recipe, host, strategy=strategy, options=_options_for(recipe, strategy, host))
    except PefttoolError:
        return False
    return True


def _base_prefix(model: Any) -> str:
    return "base_model.model." if hasattr(model, "peft_config") else ""


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


@contextlib.contextmanager
def _quiet() -> Any:
    import logging
    import warnings

    from .adapters import quiet_bitsandbytes_import

    with warnings.catch_warnings(), quiet_bitsandbytes_import():
        warnings.simplefilter("ignore")
        level = logging.getLogger("peft").level
        logging.getLogger("peft").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("peft").setLevel(level)


# ---------------------------------------------------------------- the public functions


def estimate(recipe: Recipe, device: str | float | int = "cpu", *, strategies: tuple[str, ...] | None = None,
             baseline: int | None = None, data: DataEstimate | None = None) -> Plan:
    """The memory plan for `recipe`: its own strategy and, side by side, full / LoRA / QLoRA
    (those loaded). `device` is "cpu" or a GPU's size in GiB (the CPU figures come too).
    `baseline` (bytes) overrides the measured runtime baseline. No weights are read."""
    from .plugins import get_plugin_host

    host = get_plugin_host()
    gpu_gib = None if device == "cpu" else float(device)
    if gpu_gib is not None and not gpu_gib > 0:
        raise PefttoolError(f"plan: --gpu-gib must be a positive size in GiB, not {device}")
    gpu = None if gpu_gib is None else int(gpu_gib * GiB)
    if baseline is None:
        baseline = runtime_baseline()
    wanted = list(strategies) if strategies else [name for name, s in host.strategies.items()
                                                  if s.compare_in_plan]
    own = recipe.method.strategy
    if own not in wanted:
        wanted.append(own)
    rows = []
    for name in wanted:
        if name != own and not _could_run(recipe, name, host):
            continue  # e.g. a 4-bit strategy beside a GGUF model (it loads dequantized)
        rows.append(_estimate_strategy(recipe, name, host, gpu, baseline))
    config = _config(recipe)
    attention = recipe.model.attn_implementation or getattr(config, "_attn_implementation", None) or "sdpa"
    assumptions = [
        f"CPU runtime baseline {baseline / MiB:.0f} MiB: a fresh process importing torch, "
        f"transformers, PEFT, Accelerate and datasets (measured, cached)",
        "activations: one batch of train.batch_size x data.max_length (the longest batch); the "
        "evaluation's: one no_grad batch of eval.batch_size x data.max_length (eval.samples' "
        "generation not counted); a task whose examples are several rows (a preference pair: "
        "chosen and rejected) counts them all",
        "the peak is the training step's or the evaluation's, whichever is larger; its parts are shown",
    ]
    if gpu is not None:
        assumptions.append(f"GPU: {CUDA_CONTEXT / MiB:.0f} MiB CUDA context assumed (not measured "
                           f"here); allocator fragmentation not counted")
    return Plan(recipe=recipe.name, strategy=own, model=recipe.model.path, task=recipe.task.type,
                dtype=recipe.model.dtype, optimizer=recipe.train.optimizer,
                mixed_precision=recipe.train.mixed_precision, attention=str(attention),
                batch_size=recipe.train.batch_size, max_length=recipe.data.max_length,
                grad_accum=recipe.train.grad_accum, rows=rows, gpu_gib=gpu_gib, data=data,
                assumptions=assumptions)


SAMPLE_ROWS = 2000


def data_estimate(recipe: Recipe, sample_over: int = 20000) -> DataEstimate:
    """Rows, steps and tokens per epoch from the data pipeline (tokenizer only, no weights).
    Recipes training on more than `sample_over` rows encode a sample of SAMPLE_ROWS and scale."""
    import random
    import shutil
    import tempfile

    from .data import prepare_data
    from .models import load_tokenizer

    tok = load_tokenizer(recipe)
    cap = recipe.data.max_train_rows
    sampled = cap is None or cap > sample_over
    work = recipe.model_copy(deep=True)
    work._base_dir, work._source = recipe.base_dir, recipe.source
    work._strategy_options = recipe._strategy_options
    if sampled:
        work.data.max_train_rows = SAMPLE_ROWS
    cache = tempfile.mkdtemp(prefix="pefttool-plan-")
    try:
        prepared = prepare_data(work, tok, log=lambda _m: None, cache_dir=cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    lengths = [int(sum(m)) for m in prepared.train["attention_mask"]]
    stats = prepared.stats["train"]
    encoded = len(lengths)
    available = encoded + int(stats.get("capped", 0) or 0)
    n_train = min(available, cap) if cap else available
    scale = n_train / max(encoded, 1)
    batch = recipe.train.batch_size
    rng = random.Random(recipe.train.seed)
    order = lengths[:]
    rng.shuffle(order)
    padded = sum(max(order[i:i + batch]) * len(order[i:i + batch]) for i in range(0, len(order), batch))
    processes = recipe.distributed.processes * recipe.distributed.num_machines
    # The engine's own count (sampling.RunLength): packed rows with data.packing, scaled like
    # the examples when only a sample was encoded.
    rows = round(RunLength.training_rows(lengths, recipe) * scale)
    length = settle(recipe, check=False).length(rows, processes)
    steps, total = length.steps_per_epoch, length.total_steps
    truncated = int(stats.get("truncated", stats.get("dropped_truncated", 0)) or 0)
    return DataEstimate(
        train_rows=n_train, eval_rows=len(prepared.eval), steps_per_epoch=steps, total_steps=total,
        tokens_per_epoch=round(sum(lengths) * scale), padded_tokens_per_epoch=round(padded * scale),
        mean_length=round(sum(lengths) / max(encoded, 1), 1), max_length_seen=max(lengths, default=0),
        truncated_rows=round(truncated * scale),
        method=(f"sampled {encoded:,} of {n_train:,} rows" if sampled and encoded < n_train
                else f"encoded every row ({encoded:,})"))


def _die_with_parent() -> None:
    """In the calibration child, before exec: Linux ends it when pefttool plan dies, even by
    SIGKILL (prctl PR_SET_PDEATHSIG); elsewhere the parent's `finally` is the only guard."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


@contextlib.contextmanager
def _signals_raise() -> Any:
    """SIGTERM and SIGHUP raise SystemExit (128 + the signal) while the block runs, so the
    `finally` clauses around it run: by default they end Python at once."""
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def calibrate(recipe_path: Path, overrides: list[str], recipe: Recipe, steps: int = 5,
              total_steps: int | None = None) -> Calibration:
    """Run `steps` real optimizer steps of the recipe (`pefttool run` in a child process, into
    a temporary folder deleted afterwards; no evaluation before training, one eval batch at the
    end), and extrapolate the seconds per step to the full run. The child's peak RSS comes too."""
    import shutil
    import tempfile
    import time

    out = Path(tempfile.mkdtemp(prefix="pefttool-calibrate-"))
    cmd = [sys.executable, "-m", "pefttool.cli", "run", str(recipe_path), "--quiet",
           *[f"--set={o}" for o in overrides],
           f"--set=train.max_steps={steps}", "--set=train.log_every=1",
           "--set=eval.before_training=false", f"--set=data.max_eval_rows={recipe.eval.batch_size}",
           "--set=train.checkpoint_every=0", "--set=early_stopping.enabled=false",
           f"--set=output.dir={json.dumps(str(out / 'run'))}", "--set=output.overwrite=true"]
    started = time.time()
    proc: subprocess.Popen | None = None
    try:
        with _signals_raise():  # SIGTERM/SIGHUP (timeout, a closed SSH session) reach `finally`
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    preexec_fn=_die_with_parent)
            output = proc.stdout.read() if proc.stdout else ""
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            last = (output.strip().splitlines() or ["?"])[-1]
            raise PefttoolError(f"plan --calibrate: the calibration run failed (exit {code}): {last}")
        events = [json.loads(line) for line in (out / "run" / EVENTS_FILE).read_text().splitlines()
                  if line.strip()]
    finally:
        if proc is not None and proc.returncode is None:  # stopped while the child trains
            proc.kill()
            proc.wait()
        shutil.rmtree(out, ignore_errors=True)
    step_events = [e for e in events if e.get("type") == "step"]
    start = next((e for e in events if e.get("type") == "start"), None)
    if len(step_events) < 2 or start is None:
        raise PefttoolError("plan --calibrate: the calibration run logged fewer than 2 steps; "
                            "raise --calibrate-steps")
    # Skip the first step (warm-up: allocations, denormals, caches).
    first, last = step_events[0], step_events[-1]
    per_step = (last["elapsed_s"] - first["elapsed_s"]) / max(last["step"] - first["step"], 1)
    setup = max(start["time"] - started, 0.0)
    planned = total_steps if total_steps is not None else start.get("total_steps", steps)
    if total_steps is None:
        planned = start["steps_per_epoch"] * recipe.train.epochs
        if recipe.train.max_steps:
            planned = min(planned, recipe.train.max_steps)
    note = "training steps only: evaluations not included; a shared machine makes this noisy"
    compiling = 0.0
    if recipe.train.compile:  # the first step compiled the model: a run pays that once
        compiling = max(first["elapsed_s"] - per_step * first["step"], 0.0)
        note += f"; includes the first step's compile ({compiling:.0f} s, train.compile)"
    return Calibration(steps=len(step_events), sec_per_step=round(per_step, 4), setup_s=round(setup, 1),
                       peak_rss=usage.ru_maxrss * 1024,
                       estimated_train_s=round(setup + compiling + planned * per_step, 1),
                       note=note)


# ---------------------------------------------------------------- the text report


def _mib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / GiB:.2f} GiB" if abs(n) >= 10 * GiB else f"{n / MiB:,.0f} MiB"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def render(plan: Plan) -> str:
    """The plan as text for a terminal."""
    lines = [f"plan for {plan.recipe}: {plan.task}, strategy {plan.strategy}, model {plan.model}",
             f"  dtype {plan.dtype}, mixed precision {plan.mixed_precision}, optimizer {plan.optimizer}, "
             f"attention {plan.attention}, batch {plan.batch_size} x length {plan.max_length}"
             f"{f' (grad_accum {plan.grad_accum})' if plan.grad_accum > 1 else ''}", ""]
    headers = ["", *[r.strategy + (" *" if r.own else "") for r in plan.rows]]
    table: list[list[str]] = [
        ["parameters", *[_count(r.params_total) for r in plan.rows]],
        ["trainable", *[f"{_count(r.params_trainable)} ({r.params_trainable / max(r.params_total, 1):.2%})"
                        for r in plan.rows]],
        ["grad. checkpointing", *["on" if r.gradient_checkpointing else "off" for r in plan.rows]],
    ]
    for part in ("runtime", "weights", "gradients", "optimizer", "activations", "other"):
        table.append([f"  {part}", *[_mib(r.cpu.parts()[part]) for r in plan.rows]])
    table.append(["CPU peak (RSS)", *[_mib(r.cpu.total) for r in plan.rows]])
    table.append(["  training / eval", *[f"{_mib(r.phases['cpu']['training'])} / {_mib(r.phases['cpu']['evaluation'])}"
                                         if "cpu" in r.phases else "-" for r in plan.rows]])
    table.append(["checkpoint on disk", *[_mib(r.checkpoint) for r in plan.rows]])
    if plan.gpu_gib is not None:
        table.append([f"GPU {plan.gpu_gib:g} GiB peak", *[_mib(r.gpu.total) for r in plan.rows if r.gpu]])
        table.append(["  peak during", *[r.peak_phase("gpu") for r in plan.rows if r.gpu]])
        table.append(["  fits / headroom", *[f"{'yes' if r.gpu.fits else 'NO'} {_mib(r.gpu.headroom)}"
                                              for r in plan.rows if r.gpu]])
    widths = [max(len(row[i]) for row in [headers, *table]) for i in range(len(headers))]
    for row in [headers, *table]:
        lines.append("  " + "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                                      for i, cell in enumerate(row)).rstrip())
    lines.append("  (* the recipe's own strategy; the others with its [method] keys where they apply)")
    for r in plan.rows:
        if r.note:
            lines.append(f"  {r.strategy}: {r.note}")
    if plan.data:
        d = plan.data
        lines += ["", f"data ({d.method}): {d.train_rows:,} train rows, {d.eval_rows:,} eval rows; "
                      f"{d.steps_per_epoch:,} steps/epoch, {d.total_steps:,} steps planned",
                  f"  {d.tokens_per_epoch:,} tokens/epoch ({d.padded_tokens_per_epoch:,} with padding); "
                  f"length mean {d.mean_length}, max {d.max_length_seen}; {d.truncated_rows:,} rows truncated"]
    if plan.calibration:
        c = plan.calibration
        lines += ["", f"calibration ({c.steps} real steps): {c.sec_per_step:.2f} s/step, setup {c.setup_s:.0f} s, "
                      f"peak RSS {_mib(c.peak_rss)}",
                  f"  estimated training time {_duration(c.estimated_train_s)} ({c.note})"]
    lines += ["", "assumptions:", *[f"  - {a}" for a in plan.assumptions]]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"
