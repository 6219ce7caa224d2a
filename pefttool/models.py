"""Safe model and tokenizer loading.

Safety rules, each a recipe choice that defaults to safe:
  * weights load only from safetensors (or GGUF); a folder with only pickle weights
    (`pytorch_model.bin`, `.pt`...) is refused unless `model.allow_pickle = true`, because
    unpickling can run arbitrary code;
  * `trust_remote_code` (running Python shipped with a model) stays off unless the recipe asks.

Every problem the user can fix is a one-line `ModelError` naming the recipe key and the fix;
transformers' OSError/ValueError are translated, never shown raw.

    load_tokenizer(recipe)                              -> tokenizer
    load_model(recipe, strategy, options, label_names)  -> the unwrapped model
    safety_summary(recipe)                              -> dict for the start event
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import ModelError, one_line
from .locations import LocationError, looks_like_hub_id
from .tasks import get_task

if TYPE_CHECKING:
    from .recipe import Recipe
    from .strategy import GuardedStrategy, Strategy

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "auto": "auto"}


# ---------------------------------------------------------------- where the model is


def _location(recipe: Recipe) -> tuple[str, Path]:
    loc = recipe.model.path
    try:
        return loc, recipe.resolve_path(loc)
    except LocationError as exc:
        raise ModelError(f"model.path: {exc}") from None


def _hub_offline() -> bool:
    try:
        from huggingface_hub.constants import is_offline_mode

        return bool(is_offline_mode())
    except Exception:  # pragma: no cover - older huggingface_hub
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _weight_files(folder: Path) -> tuple[list[str], list[str]]:
    """(safetensors files, pickle files) in `folder` (top level: where transformers looks)."""
    safe, pickle = [], []
    for item in sorted(folder.iterdir()):
        if not item.is_file():
            continue
        if item.name.endswith(SAFE_SUFFIXES):
            safe.append(item.name)
        elif item.name.endswith(PICKLE_SUFFIXES) and not item.name.startswith("training_args"):
            pickle.append(item.name)
    return safe, pickle


def weights_format(recipe: Recipe) -> str:
    """'gguf', 'safetensors', 'pickle', 'hub' (resolved at load time), or 'none' (nothing found)."""
    try:
        loc, path = _location(recipe)
    except ModelError:
        return "none"
    if recipe.model.gguf_file:
        return "gguf"
    if not path.exists():
        return "hub" if looks_like_hub_id(loc) else "none"
    if not path.is_dir():
        return "none"
    safe, pickle = _weight_files(path)
    if safe:
        return "safetensors"
    if pickle:
        return "pickle"
    return "none"


def safety_summary(recipe: Recipe) -> dict[str, Any]:
    """What the start event reports about how the model is loaded (cheap: lists files only)."""
    out: dict[str, Any] = {
        "allow_pickle": recipe.model.allow_pickle,
        "trust_remote_code": recipe.model.trust_remote_code,
        "weights_format": weights_format(recipe),
    }
    if recipe.model.trust_remote_code:
        out["remote_code_files"] = remote_code_files(recipe)
    return out


def remote_code_files(recipe: Recipe) -> list[str]:
    """The Python files in a local model folder: what trust_remote_code lets transformers run
    (a hub id's files are fetched at load time and cannot be listed here)."""
    try:
        _, path = _location(recipe)
    except ModelError:
        return []
    return sorted(p.name for p in path.glob("*.py")) if path.is_dir() else []


def remote_code_warning(recipe: Recipe) -> str | None:
    """One warning line when the recipe lets the model run its own code, naming the files."""
    if not recipe.model.trust_remote_code:
        return None
    files = remote_code_files(recipe)
    named = ", ".join(files) if files else "no .py file in the folder; a hub model fetches its own"
    return (f"model.trust_remote_code = true: loading runs the Python code shipped with the model "
            f"({named}) with your permissions; keep it only for a source you trust")


def check_model_source(recipe: Recipe) -> tuple[Path | str, dict[str, Any]]:
    """Check the model location before loading; return (what to pass to from_pretrained,
    safety kwargs). Raises a one-line `ModelError` naming the key and the fix."""
    loc, path = _location(recipe)
    gguf = recipe.model.gguf_file
    kwargs: dict[str, Any] = {"trust_remote_code": recipe.model.trust_remote_code}

    if not path.exists():
        if looks_like_hub_id(loc):
            if _hub_offline():
                raise ModelError(
                    f"model.path: '{loc}' looks like a hub id, but the hub is offline "
                    f"(HF_HUB_OFFLINE); download the model and point model.path at its folder")
            if gguf:
                kwargs["gguf_file"] = gguf
            else:
                # Hub repos: safetensors unless pickle is allowed (then either format).
                kwargs["use_safetensors"] = None if recipe.model.allow_pickle else True
            return loc, kwargs
        raise ModelError(f"model.path: '{loc}' does not exist (looked at {path}); fix the path")

    if path.is_file():
        if path.suffix == ".gguf":
            raise ModelError(
                f"model.path: '{loc}' is a .gguf file; set model.path to its folder "
                f"({path.parent}) and model.gguf_file = \"{path.name}\"")
        raise ModelError(f"model.path: '{loc}' is a file; point it at the model's folder "
                         f"(the one holding config.json and the weights)")

    if gguf:
        if not (path / gguf).is_file():
            found = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; .gguf files there: {', '.join(found)}" if found else "; there are no .gguf files there"
            raise ModelError(f"model.gguf_file: '{gguf}' is not a file in {path}{hint}")
        try:
            import gguf as _gguf  # noqa: F401
        except ImportError:
            raise ModelError("model.gguf_file: loading GGUF needs the gguf package: "
                             "pip install gguf") from None
        kwargs["gguf_file"] = gguf
        _check_gguf(path / gguf)
        return path, kwargs

    config = path / "config.json"
    if not config.is_file() and (path / "adapter_config.json").is_file():
        base = ""
        with contextlib.suppress(Exception):
            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        raise ModelError(f"model.path: '{loc}' is a PEFT adapter, not a full model; point model.path "
                         f"at its base model{f' ({base})' if base else ''}")
    if not config.is_file():
        raise ModelError(f"model.path: '{loc}' is not a model folder (no config.json in {path}); "
                         f"point it at the folder holding config.json and the weights")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model.path: {config} is unreadable ({one_line(exc)}); "
                         f"re-download or re-save the model") from None

    safe, pickle = _weight_files(path)
    if safe:
        for name in safe:
            _check_safetensors(path / name)
        kwargs["use_safetensors"] = True
    elif pickle:
        if not recipe.model.allow_pickle:
            raise ModelError(
                f"model.path: {path} has only pickle weights ({', '.join(pickle)}), which can run "
                f"code when loaded; convert them to safetensors, or set model.allow_pickle = true "
                f"if you trust where they came from")
        kwargs["use_safetensors"] = False
    else:
        raise ModelError(f"model.path: {path} has a config.json but no weights "
                         f"(model.safetensors); re-download or re-save the model")
    return path, kwargs


def _damaged(file: Path, why: str) -> ModelError:
    return ModelError(f"model.path: the weights file {file} is damaged ({why}); re-download or "
                      f"re-save the model (a truncated copy or an interrupted download does this)")


def _check_safetensors(file: Path) -> None:
    """Read a safetensors file's header and check the data it promises is all there. Cheap
    (the header only, plus the file size), and it turns what would be a SafetensorError deep
    inside from_pretrained into a one-line error naming the file."""
    damage = safetensors_damage(file)
    if damage:
        raise _damaged(file, damage)


def safetensors_damage(file: Path) -> str | None:
    """What is wrong with a safetensors file, in words (None when its header reads and the data
    it promises is all there); also for a run's model/ that has no manifest to check against."""
    try:
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{file.stat().st_size} bytes, shorter than a header"
            n = int.from_bytes(head, "little")
            size = file.stat().st_size
            if n > size - 8:
                return f"header claims {n:,} bytes, the file has {size:,}"
            header = json.loads(fh.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"unreadable header: {one_line(exc, 80)}"
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    end = 0
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        offsets = info.get("data_offsets")
        if isinstance(offsets, list) and len(offsets) == 2 and isinstance(offsets[1], int):
            end = max(end, offsets[1])
    if 8 + n + end > size:
        return f"{size:,} bytes, but its tensors need {8 + n + end:,}"
    return None


def _check_gguf(file: Path) -> None:
    """A GGUF file's header and tensor table fit in the file (the gguf reader checks both)."""
    stat = file.stat()
    _check_gguf_once(str(file), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _check_gguf_once(name: str, size: int, mtime_ns: int) -> None:
    """Reading the tensor table of a 100 MB file takes seconds: once per file version, not
    once for the tokenizer and again for the model."""
    file = Path(name)
    try:
        from gguf import GGUFReader
    except ImportError:
        return  # check_model_source already asked for the gguf package
    try:
        GGUFReader(str(file))
    except Exception as exc:  # the reader raises ValueError/struct errors on a short file
        raise _damaged(file, one_line(exc, 120)) from None


# ---------------------------------------------------------------- loading


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Only errors from transformers' logger (no 'newly initialized' load reports), and no
    progress bars (weight loading, GGUF conversion); restored afterwards."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    if bars:
        hf_logging.disable_progress_bar()
    patched: tuple[Any, Any] | None = None   # (module, its tqdm before the patch)
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        if hasattr(gguf_utils, "tqdm"):
            patched = (gguf_utils, gguf_utils.tqdm)
            original = gguf_utils.tqdm
            gguf_utils.tqdm = lambda *a, **k: original(*a, **{**k, "disable": True})
    except Exception:  # pragma: no cover - the module moved; a progress bar is harmless
        patched = None
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if patched is not None:
            patched[0].tqdm = patched[1]



def _translate(exc: BaseException, loc: str, what: str) -> ModelError:
    msg = one_line(exc)
    low = str(exc).lower()
    if "trust_remote_code" in low:
        return ModelError(f"model.trust_remote_code: '{loc}' ships its own Python code; set "
                          f"model.trust_remote_code = true only if you trust its source")
    if isinstance(exc, ImportError) or "pip install" in low:
        return ModelError(f"model.path: loading {what} from '{loc}' needs a missing package: {msg}")
    if "couldn't connect" in low or "offline" in low:
        return ModelError(f"model.path: '{loc}' is not on disk and the hub cannot be reached; "
                          f"download the model and point model.path at its folder")
    if "model_type" in low or "unrecognized" in low:
        return ModelError(f"model.path: '{loc}' is not a model transformers knows ({msg}); "
                          f"check config.json, or set model.trust_remote_code if it needs its own code")
    return ModelError(f"model.path: cannot load {what} from '{loc}': {msg}")


CHAT_TEMPLATE_LIMIT = 1 << 20  # a chat template is a few KB of Jinja


def read_chat_template(path: Path) -> str:
    """`data.chat_template` as a file: its Jinja text, checked to parse (one line if not)."""
    where = f"data.chat_template: '{path}'"
    if not path.is_file():
        raise ModelError(f"{where} is not a regular file; name a Jinja chat template file")
    if path.stat().st_size > CHAT_TEMPLATE_LIMIT:
        raise ModelError(f"{where} is {path.stat().st_size:,} bytes; a chat template is Jinja text "
                         f"of a few KB")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{where} is unreadable ({type(exc).__name__}); save it as UTF-8 text") from None
    try:
        import jinja2

        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ModelError(f"{where} is not a valid Jinja template (line {exc.lineno}: {exc.message})") from None
    if not text.strip():
        raise ModelError(f"{where} is empty; write the template, or set data.chat_template = true")
    return text


def load_tokenizer(recipe: Recipe) -> Any:
    """The model's tokenizer; pad = eos when it has no pad token; right padding (training)."""
    from transformers import AutoTokenizer

    source, kwargs = check_model_source(recipe)
    kwargs.pop("use_safetensors", None)
    if isinstance(source, Path) and "gguf_file" not in kwargs \
            and not any((source / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"model.path: {source} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}"
                         f"...); save the base model's tokenizer into it (tokenizer.save_pretrained)")
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, ImportError, TypeError) as exc:
        raise _translate(exc, recipe.model.path, "a tokenizer") from exc
    template = recipe.data.chat_template
    if isinstance(template, str):  # a Jinja file replaces the model's own chat template
        tok.chat_template = read_chat_template(recipe.resolve_path(template))
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif get_task(recipe).sequence_labels:
            raise ModelError(f"model.path: the tokenizer of '{recipe.model.path}' has neither a pad "
                             f"nor an eos token, so causal-lm batches cannot be padded; use a model "
                             f"whose tokenizer defines an eos token")
    tok.padding_side = "right"
    return tok


def load_model(
    recipe: Recipe,
    strategy: Strategy | GuardedStrategy,
    options: Any,
    label_names: list[str] | None = None,
    tokenizer: Any = None,
) -> Any:
    """Load the base model as the task needs, with the strategy's `load_kwargs` (unwrapped).

    `label_names` (classification) sets num_labels, id2label and label2id; default: the
    recipe's `task.labels`. `tokenizer`, if given, supplies a missing `pad_token_id` (needed
    by decoder-only classifiers to find each row's last token).
    """
    source, kwargs = check_model_source(recipe)
    kwargs.update(strategy.load_kwargs(recipe, options) or {})
    kwargs["dtype"] = _DTYPES[recipe.model.dtype]
    if recipe.model.attn_implementation:
        kwargs["attn_implementation"] = recipe.model.attn_implementation
    task = get_task(recipe)
    cls, what = task.auto_model_class(), task.model_noun
    kwargs.update(task.model_kwargs(recipe))  # the task's head (a regression head: num_labels=1)
    head: list[str] | None = None
    labels: list[str] = []
    if task.has_labels:
        labels = list(label_names or recipe.task.labels or [])
        head = _trained_head_labels(source) if isinstance(source, Path) else None
        reorder = head is not None and head != labels and sorted(head) == sorted(labels)
        if head is not None and labels and sorted(head) != sorted(labels) \
                and not recipe.model.reset_head:
            new = [n for n in labels if n not in head]
            raise ModelError(
                f"task.labels: the model at model.path has a trained head for {head}, and "
                f"{', '.join(map(repr, new)) or 'fewer labels'} {'are' if len(new) != 1 else 'is'} "
                f"new to it; set model.reset_head = true to train a new head (its training is "
                f"lost), or use the model's labels")
        if reorder:
            labels_to_load = head  # load the head as trained, then reorder its rows
        else:
            labels_to_load = labels
        if labels_to_load:
            kwargs.update(num_labels=len(labels_to_load), id2label=dict(enumerate(labels_to_load)),
                          label2id={name: i for i, name in enumerate(labels_to_load)})
        # a checkpoint whose head has another number of labels gets a new head (not an error)
        kwargs.setdefault("ignore_mismatched_sizes", True)
    try:
        with quiet_transformers():
            model = cls.from_pretrained(source, **kwargs)
    except pickle.UnpicklingError:  # model.allow_pickle, and the file carries more than tensors
        raise ModelError(f"model.path: the pickle weights in '{recipe.model.path}' hold code or objects "
                         f"beyond tensors, which safe loading refuses (nothing was run); get "
                         f"safetensors weights from a source you trust") from None
    except (OSError, ValueError, KeyError, ImportError, TypeError) as exc:
        raise _translate(exc, recipe.model.path, what) from exc

    check_length_fits(recipe, model.config)
    if task.has_labels and head is not None and labels:
        if reorder:
            _reorder_head(model, [head.index(name) for name in labels])
        elif head != labels:  # reset_head = true: same size, other labels → a fresh head
            _reset_head(model)
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
    if kwargs.get("gguf_file"):
        forget_gguf_quantization(model)
    if tokenizer is not None and getattr(model.config, "pad_token_id", None) is None \
            and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _trained_head_labels(folder: Path) -> list[str] | None:
    """The label names of a saved sequence classifier's head, in id order; None when the
    folder holds no trained head (a base model, or transformers' LABEL_0.. placeholders)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    architectures = config.get("architectures") or []
    id2label = config.get("id2label")
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures) \
            or not isinstance(id2label, dict):
        return None
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (ValueError, TypeError):
        return None
    if all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return None
    return names


def _head_linear(model: Any) -> Any:
    """The output Linear of a sequence classifier's head (BERT `classifier`, Llama `score`,
    RoBERTa `classifier.out_proj`)."""
    import torch

    n = model.config.num_labels
    for name in ("classifier", "score"):
        module = getattr(model, name, None)
        if module is None:
            continue
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear) and m.out_features == n]
        if linears:
            return linears[-1]
    return None


def _reorder_head(model: Any, order: list[int]) -> None:
    """Row i of the head becomes the saved row `order[i]`: the recipe lists the model's labels
    in another order, and each label keeps what it learnt."""
    import torch

    linear = _head_linear(model)
    if linear is None:
        raise ModelError("task.labels: the labels are in another order than the model's head, and "
                         "pefttool cannot find the head to reorder it; list task.labels in the "
                         "model's order (config.json id2label)")
    index = torch.as_tensor(order)
    with torch.no_grad():
        linear.weight.copy_(linear.weight[index].clone())
        if linear.bias is not None:
            linear.bias.copy_(linear.bias[index].clone())


def _reset_head(model: Any) -> None:
    linear = _head_linear(model)
    if linear is not None:
        init = getattr(model, "_init_weights", None)
        if callable(init):
            init(linear)
        else:
            linear.reset_parameters()


def gradient_checkpointing_wanted(recipe: Recipe, strategy: Any, options: Any) -> bool:
    """Whether a run recomputes activations in backward, decided once for the engine and
    `pefttool plan`: train.gradient_checkpointing, or when unset the task's default for this
    strategy (on for a causal LM under a memory-first strategy such as QLoRA); on in any case
    when the strategy's own `gradient_checkpointing` option asks for it."""
    if recipe.train.gradient_checkpointing is not None:
        wanted = recipe.train.gradient_checkpointing
    else:
        wanted = get_task(recipe).gradient_checkpointing_by_default(
            recipe, memory_first=bool(getattr(strategy, "memory_first", False)))
    return wanted or bool(getattr(options, "gradient_checkpointing", False))


def enable_gradient_checkpointing(model: Any) -> bool:
    """Recompute activations in backward (non-reentrant, so frozen inputs under LoRA/QLoRA
    still get gradients where adapters need them). False when the model cannot."""
    target = model
    if not hasattr(target, "gradient_checkpointing_enable"):
        return False
    if not getattr(getattr(model, "base_model", model), "supports_gradient_checkpointing", True):
        return False
    with contextlib.suppress(AttributeError):
        model.enable_input_require_grads()  # reentrant checkpointing (some models) needs it
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False  # a KV cache is useless in training and clashes with recompute
    return True


def check_length_fits(recipe: Recipe, config: Any) -> None:
    """data.max_length must fit the model's position table: longer rows would train a few
    steps and then fail with a tensor-size error (or index past the table)."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and 0 < limit < recipe.data.max_length:
        raise ModelError(f"data.max_length: {recipe.data.max_length} is more than the "
                         f"{limit} positions of the model at model.path "
                         f"(max_position_embeddings); set data.max_length to at most {limit}")


def forget_gguf_quantization(model: Any) -> None:
    """A GGUF-loaded model is already dequantized (plain float tensors), but transformers still
    marks it quantized and then refuses `save_pretrained`; clear the marks."""
    model.hf_quantizer = None
    if "is_quantized" in vars(model):
        model.is_quantized = False
    if hasattr(model, "quantization_method"):
        with contextlib.suppress(AttributeError):
            del model.quantization_method
    if hasattr(model.config, "quantization_config"):
        with contextlib.suppress(AttributeError):
            del model.config.quantization_config
