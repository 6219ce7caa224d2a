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
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import ModelError
from .locations import LocationError, looks_like_hub_id

if TYPE_CHECKING:
    from .recipe import Recipe
    from .strategy import Strategy

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
    return {
        "allow_pickle": recipe.model.allow_pickle,
        "trust_remote_code": recipe.model.trust_remote_code,
        "weights_format": weights_format(recipe),
    }


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
        raise ModelError(f"model.path: {config} is unreadable ({_first_line(exc)}); "
                         f"re-download or re-save the model") from None

    safe, pickle = _weight_files(path)
    if safe:
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
    patched = None
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


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """The exception's message on one line, shortened."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _translate(exc: BaseException, loc: str, what: str) -> ModelError:
    msg = _first_line(exc)
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
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif recipe.task.type == "causal-lm":
            raise ModelError(f"model.path: the tokenizer of '{recipe.model.path}' has neither a pad "
                             f"nor an eos token, so causal-lm batches cannot be padded; use a model "
                             f"whose tokenizer defines an eos token")
    tok.padding_side = "right"
    return tok


def load_model(
    recipe: Recipe,
    strategy: Strategy,
    options: Any,
    label_names: list[str] | None = None,
    tokenizer: Any = None,
) -> Any:
    """Load the base model as the task needs, with the strategy's `load_kwargs` (unwrapped).

    `label_names` (classification) sets num_labels, id2label and label2id; default: the
    recipe's `task.labels`. `tokenizer`, if given, supplies a missing `pad_token_id` (needed
    by decoder-only classifiers to find each row's last token).
    """
    import transformers

    source, kwargs = check_model_source(recipe)
    from .strategy import call_strategy

    kwargs.update(call_strategy(strategy, "load_kwargs", recipe, options) or {})
    kwargs["dtype"] = _DTYPES[recipe.model.dtype]
    if recipe.task.type == "classification":
        cls = transformers.AutoModelForSequenceClassification
        labels = list(label_names or recipe.task.labels or [])
        if labels:
            kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                          label2id={name: i for i, name in enumerate(labels)})
        # a checkpoint whose head has another number of labels gets a new head (not an error)
        kwargs.setdefault("ignore_mismatched_sizes", True)
        what = "a classifier"
    else:
        cls = transformers.AutoModelForCausalLM
        what = "a causal language model"
    try:
        with quiet_transformers():
            model = cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, ImportError, TypeError) as exc:
        raise _translate(exc, recipe.model.path, what) from exc

    if kwargs.get("gguf_file"):
        forget_gguf_quantization(model)
    if tokenizer is not None and getattr(model.config, "pad_token_id", None) is None \
            and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


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
