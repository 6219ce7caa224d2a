"""Editing a recipe as plain data: the form's fields, text ↔ value, overrides, saving.

No textual here: the Adjust screen is a thin view over these helpers, and they are tested on
their own. Validation is never done here: the screen calls `pefttool.recipe.validate_recipe`
on the edited dict, the very schema `pefttool validate` uses.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ..errors import PefttoolError
from ..recipe import Recipe
from ..tasks import Task, registered

# The fields most recipes are adjusted on, in the order the form shows them.
COMMON_KEYS = (
    "name", "train.lr", "train.epochs", "train.batch_size", "train.grad_accum",
    "train.max_steps", "data.max_length", "data.max_train_rows", "train.warmup_ratio",
    "train.scheduler", "train.mixed_precision", "early_stopping.enabled", "data.max_eval_rows",
    "eval.batch_size", "eval.every_steps", "eval.before_training", "output.dir",
)
# "Quick trial": small sizes, so a first try of a recipe takes minutes, not an hour.
QUICK_TRIAL = {"train.max_steps": 20, "data.max_train_rows": 200, "data.max_eval_rows": 64}
PATH_KEYS = ("model.path", "data.train", "data.eval")

# What each common value trades, for the fields whose schema carries no description.
HELP = {
    "name": "names the run folder and the saved model",
    "train.lr": "higher learns faster but can diverge; adapters take ~10x full fine-tuning's",
    "train.epochs": "passes over the data; early stopping may end sooner",
    "train.batch_size": "samples per step; memory grows with it",
    "train.grad_accum": "steps accumulated per update: effective batch = batch x accum",
    "data.max_length": "tokens per example; longer costs time and memory",
    "data.max_train_rows": "cap on training rows (empty: all); fewer is faster",
    "train.warmup_ratio": "share of steps ramping the learning rate up",
    "train.scheduler": "how the learning rate decays after warmup",
    "train.mixed_precision": "bf16 halves activation memory; fp16 needs a GPU",
    "early_stopping.enabled": "stop when the metric stops improving",
    "data.max_eval_rows": "cap on evaluation rows (empty: all); each evaluation reads them all",
    "eval.batch_size": "rows per evaluation batch; memory grows with it",
    "eval.every_steps": "evaluate every N steps (0: at each epoch's end)",
    "eval.before_training": "evaluate the untrained model first, for comparison",
    "model.path": "a local folder (relative: to the recipe's folder), package:NAME/inner/path, "
                  "or a hub id org/name",
    "data.train": "the training file: CSV, JSON lines or Parquet (relative: to the recipe's "
                  "folder), or package:NAME/inner/path",
    "data.eval": "a separate evaluation file (empty: hold out data.eval_fraction of train)",
    "data.text_column": "the column holding the text to classify",
    "data.label_column": "the column holding each row's label",
    "data.prompt_column": "the column holding the prompt (instruction format)",
    "data.response_column": "the column holding the reply to learn",
    "output.dir": "for `pefttool run`: {name} and {time} are filled in; runs launched from "
                  "the TUI go in a fresh folder under its runs folder (--runs-root)",
}


@dataclass(frozen=True)
class FieldSpec:
    """One editable recipe value: its dotted key, what it means, and how it is typed in."""

    key: str
    label: str
    help: str = ""
    choices: tuple[str, ...] | None = None   # a fixed set (Literal or bool): shown as a select
    default: Any = None                      # None: required, or no default
    raw_text: bool = False                   # a plain string: what is typed is the value

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]


def _annotation_spec(annotation: Any) -> tuple[tuple[str, ...] | None, bool]:
    """(choices, raw_text) for a pydantic annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return ("true", "false"), False
    if origin is Literal:
        return tuple(str(a) for a in typing.get_args(annotation)), False
    if annotation is str:
        return None, True
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _annotation_spec(args[0])
    return None, False


def field_spec(model: type[BaseModel], name: str, key: str) -> FieldSpec:
    info = model.model_fields[name]
    choices, raw = _annotation_spec(info.annotation)
    default = None if info.default is PydanticUndefined else info.default
    return FieldSpec(key=key, label=key, help=info.description or HELP.get(key, ""),
                     choices=choices, default=default, raw_text=raw)


def common_fields() -> list[FieldSpec]:
    specs = []
    for key in COMMON_KEYS:
        section, _, name = key.rpartition(".")
        model: type[BaseModel] = Recipe
        if section:
            model = Recipe.model_fields[section].annotation  # type: ignore[assignment]
        specs.append(field_spec(model, name, key))
    return specs


def data_fields(task_type: str) -> list[FieldSpec]:
    """model.path and the data files and columns the recipe's task reads."""
    specs = []
    try:
        task = registered().get(task_type)
    except PefttoolError:  # plugins that fail to load: the Plugins screen shows why
        task = None
    for key in task.data_keys if task is not None else Task.data_keys:
        section, _, name = key.rpartition(".")
        model: type[BaseModel] = Recipe.model_fields[section].annotation  # type: ignore[assignment]
        specs.append(field_spec(model, name, key))
    return specs


def strategy_fields(options_model: type[BaseModel]) -> list[FieldSpec]:
    """The strategy's own options, from the pydantic model the strategy declares."""
    return [field_spec(options_model, name, f"method.{name}") for name in options_model.model_fields]


# ---------------------------------------------------------------- dotted access


def get_dotted(data: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `key`; `None` removes it (the schema's default applies again)."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            if value is None:
                return
            child = node[part] = {}
        node = child
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


# ---------------------------------------------------------------- text ↔ value


def toml_value(value: Any) -> str:
    """A value as a TOML literal (what `--set KEY=` and the saved file contain)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)   # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def parse_text(spec: FieldSpec, text: str) -> Any:
    """What a typed text means for this field; '' means 'not set' (None)."""
    text = text.strip()
    if not text:
        return None
    if spec.raw_text:
        return text
    if spec.choices == ("true", "false"):
        return {"true": True, "false": False}.get(text.lower(), text)
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text   # validation then says what type was expected


def format_value(spec: FieldSpec, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and (spec.raw_text or spec.choices or parse_text(spec, value) == value):
        return value   # shown bare when typing it bare gives the same string back
    if spec.choices == ("true", "false") and isinstance(value, bool):
        return "true" if value else "false"
    return toml_value(value)


def problems_for(key: str, problems: list[str]) -> list[str]:
    """The problems whose key path is `key` or below it."""
    return [p for p in problems if p.startswith(f"{key}:") or p.startswith(f"{key}.")]


# ---------------------------------------------------------------- launching and saving


def overrides_between(original: dict[str, Any], edited: dict[str, Any]) -> list[str] | None:
    """`--set KEY=VALUE` strings turning `original` into `edited`; None if a key was removed
    (an override cannot remove a key, so the edited recipe must be written out instead)."""
    before, after = flatten(original), flatten(edited)
    if any(key not in after for key in before):
        return None
    return [f"{key}={toml_value(value)}" for key, value in after.items()
            if key not in before or before[key] != value]


def absolutize_paths(data: dict[str, Any], base_dir: Path, target_dir: Path) -> dict[str, Any]:
    """Relative local paths, rewritten so they still work from a file saved in `target_dir`."""
    data = copy.deepcopy(data)
    if Path(base_dir).resolve() == Path(target_dir).resolve():
        return data
    def moved(value: Any) -> Any:
        if not isinstance(value, str) or value.startswith("package:") or Path(value).is_absolute():
            return value
        local = Path(base_dir) / value
        return str(local.resolve()) if local.exists() else value

    for key in PATH_KEYS:
        value = get_dotted(data, key)
        if isinstance(value, list):   # data.train as sources: each one's path
            set_dotted(data, key, [{**s, "path": moved(s.get("path"))} if isinstance(s, dict) else s
                                   for s in value])
        elif moved(value) != value:
            set_dotted(data, key, moved(value))
    return data


_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_\-]+)(\s*=\s*)(.*)$")


def _split_value_comment(rest: str) -> tuple[str, str] | None:
    """`1e-3   # why` → ('1e-3', '   # why'); None when the value spans lines."""
    candidates = [i for i, ch in enumerate(rest) if ch == "#"] + [len(rest)]
    for i in candidates:
        value = rest[:i].rstrip()
        try:
            tomllib.loads(f"v = {value}")
        except tomllib.TOMLDecodeError:
            continue
        return value, rest[len(value):]
    return None


def patch_toml(text: str, edited: dict[str, Any]) -> str | None:
    """The original TOML text with changed values replaced in place, comments kept, removed
    keys dropped and new keys appended to their table; None if that does not reproduce
    `edited` exactly (multi-line values, dotted keys…): the caller then writes plain TOML."""
    out: list[str] = []
    table = ""
    seen: set[str] = set()
    tables_seen: set[str] = {""}

    def additions(section: str) -> list[str]:
        node = edited if not section else get_dotted(edited, section)
        if not isinstance(node, dict):
            return []
        prefix = f"{section}." if section else ""
        return [f"{k} = {toml_value(v)}" for k, v in node.items()
                if not isinstance(v, dict) and f"{prefix}{k}" not in seen]

    def flush(section: str) -> None:
        # New keys go after the table's last line, before the blank lines that end it.
        trailing = []
        while out and not out[-1].strip():
            trailing.append(out.pop())
        out.extend(additions(section))
        out.extend(trailing)

    for line in text.splitlines():
        table_match = _TABLE.match(line)
        if table_match:
            flush(table)
            table = table_match.group(1)
            tables_seen.add(table)
            out.append(line)
            continue
        key_match = _KEY.match(line)
        if not key_match:
            out.append(line)
            continue
        indent, name, eq, rest = key_match.groups()
        key = f"{table}.{name}" if table else name
        split = _split_value_comment(rest)
        if split is None:
            return None
        old_text, comment = split
        seen.add(key)
        missing = object()
        new = get_dotted(edited, key, missing)
        if new is missing:
            continue
        old = tomllib.loads(f"v = {old_text}")["v"]
        if new == old and type(new) is type(old):
            out.append(line)
            continue
        new_text = toml_value(new)
        if comment.strip():
            gap = len(comment) - len(comment.lstrip())
            comment = " " * max(1, gap + len(old_text) - len(new_text)) + comment.lstrip()
        out.append(f"{indent}{name}{eq}{new_text}{comment}")
    flush(table)
    for section, node in edited.items():
        if isinstance(node, dict) and section not in tables_seen:
            out += ["", f"[{section}]", *additions(section)]
    result = "\n".join(out) + "\n"
    try:
        if tomllib.loads(result) != edited:
            return None
    except tomllib.TOMLDecodeError:
        return None
    return result


def recipe_text(edited: dict[str, Any], original_text: str | None, source: str) -> str:
    """The text of an adjusted recipe file: the original's comments kept where possible."""
    header = f"# Adjusted in the pefttool TUI from {source}\n"
    if original_text is not None:
        patched = patch_toml(original_text, edited)
        if patched is not None:
            return header + patched
    import tomli_w

    return header + tomli_w.dumps(edited)


def write_new_file(path: Path, text: str) -> None:
    """Create `path`; never replace an existing file (FileExistsError instead)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(text)


def free_path(folder: Path, stem: str, suffix: str = ".toml") -> Path:
    """`folder/stem.toml`, or `stem-2.toml`, `stem-3.toml`… whichever does not exist yet."""
    candidate = folder / f"{stem}{suffix}"
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}-{n}{suffix}"
        n += 1
    return candidate


def parse_raw(text: str) -> dict[str, Any]:
    """`key = value` lines (or `;`-separated), any recipe key with a TOML value, as the
    Adjust screen's "other keys" line takes them: {dotted key: value}. Raises ValueError with
    one line naming what is wrong."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in re.split(r"[;\n]", text))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise ValueError(f"'{part}' is not key = value (e.g. eval.metric = \"accuracy\")")
        try:
            out[key] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise ValueError(f"{key}: '{value.strip()}' is not a TOML value (text goes in "
                             f"quotes: \"...\")") from None
    return out


def with_raw(data: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` with the "other keys" values set."""
    merged = copy.deepcopy(data)
    for key, value in raw.items():
        set_dotted(merged, key, value)
    return merged
