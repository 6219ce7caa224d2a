"""Cleaning: raw rows → `_Row`s (text/label/prompt/response), with every drop counted, and
the messages and summaries that report it."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, did_you_mean
from . import chat
from .common import _EXAMPLES, _INT, SKIP_HINT
from .reading import _load, _make_copy, _Problem, _scan, content_digest
from .sources import _Source

if TYPE_CHECKING:
    from ..recipe import Recipe
    from .formats import RowFormat


# ---------------------------------------------------------------------------- clean


@dataclass
class _Row:
    key: str  # what duplicates are judged by: the text, or the prompt
    text: str  # classification/plain text: the text; instruction: the prompt
    label: str | None = None  # classification: label name; instruction: the response
    conversation: chat.Conversation | None = None  # chat: the rendered conversation

    def label_text(self) -> str:
        """The label (classification) or the response (instruction, chat): every row but a
        plain-text one has it."""
        assert self.label is not None, "a plain-text row has no label or response"
        return self.label

    def chat_conversation(self) -> chat.Conversation:
        """A chat row's conversation (`_chat_row` always sets it)."""
        assert self.conversation is not None, "only a chat row has a conversation"
        return self.conversation


def _template_fields(template: str) -> list[str]:
    names: list[str] = []
    try:
        for _text, name, _spec, _conv in string.Formatter().parse(template):
            if name is None:
                continue
            base = re.split(r"[.\[]", name, maxsplit=1)[0]
            if not base or base.isdigit():
                raise DataError(f"data.prompt_template: '{{{name}}}' is not a column name; write "
                                "{column} for each column, e.g. 'Review: {text}'")
            if base not in names:
                names.append(base)
    except ValueError as exc:
        raise DataError(f"data.prompt_template: not a valid format string ({exc}); "
                        "write literal braces as {{ and }}") from None
    if not names:
        raise DataError("data.prompt_template: names no column; use {column} for the row's "
                        "values, e.g. 'Review: {text}'")
    return names


def _sorted_labels(labels: set[str]) -> list[str]:
    if labels and all(_INT.fullmatch(x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _as_text(value: Any) -> str | None:
    """A cell as text; None for null, a list/dict is not text (raises ValueError)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict, tuple)):
        raise ValueError(f"is a {'list' if not isinstance(value, dict) else 'JSON object'}, not text")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class _BadRow(Exception):
    def __init__(self, what: str, column: str):
        self.what, self.column = what, column


class _Unknown(Exception):
    def __init__(self, value: str, declared: list[str] | None = None):
        self.value = value
        # A declared label that differs from the value only in case ("Fresh" vs "fresh"):
        # dropping such rows silently would leave a one-class training set.
        low = value.lower()
        self.case_of = next((d for d in declared or [] if d.lower() == low and d != value), None)


def _label(value: Any, declared: list[str] | None, column: str) -> str:
    """A raw label → a label name; raises _BadRow (null, int out of range) or _Unknown."""
    if isinstance(value, (list, dict, tuple)):
        raise _BadRow("is a list/object, not a label", column)
    if value is None or (isinstance(value, float) and value != value):
        raise _BadRow("is null (no label)", column)
    as_int: int | None = None
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, int):
        as_int, text = value, str(value)
    elif isinstance(value, float) and value.is_integer():
        as_int, text = int(value), str(int(value))
    else:
        text = str(value).strip()
        if not text:
            raise _BadRow("is empty (no label)", column)
        if _INT.fullmatch(text):
            as_int = int(text)
    if declared is None:
        return str(as_int) if as_int is not None else text
    if text in declared:
        return text
    if as_int is None:
        raise _Unknown(text, declared)
    if str(as_int) in declared:
        return str(as_int)
    if not any(_INT.fullmatch(x) for x in declared):  # names declared: an int is an id
        if 0 <= as_int < len(declared):
            return declared[as_int]
        raise _BadRow(f"is label id {as_int}, out of range for the {len(declared)} labels in "
                      f"task.labels (ids 0..{len(declared) - 1})", column)
    raise _BadRow(f"is label {as_int}, not one of task.labels {declared}", column)


def _response(value: Any, spec: RowFormat, column: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        raise _BadRow("is null (no response)", column)
    if isinstance(value, str) and not value.strip():
        return ""
    if spec.response_map is None and spec.declared is None:
        try:
            text = _as_text(value)
        except ValueError as exc:
            raise _BadRow(str(exc), column) from None
        return (text or "").strip()
    key = _label(value, None, column)  # raw value as text (ints → '1')
    if spec.response_map is not None:
        if key not in spec.response_map:
            raise _Unknown(key)
        return spec.response_map[key].strip()
    assert spec.declared is not None  # neither a response map nor a label set returned above
    if key not in spec.declared:
        raise _Unknown(key)
    return key


def _new_counts(src: _Source, source: str | None = None) -> dict[str, Any]:
    return {
        "file": src.name,
        "source": source or src.key,
        "rows_read": 0,
        "dropped_bad": 0,
        "dropped_empty": 0,
        "dropped_unknown_label": 0,
        "dropped_duplicate": 0,
        "dropped_in_train": 0,
        "held_out": 0,
        "capped": 0,
        "dropped_truncated": 0,
        "truncated": 0,
        "kept": 0,
        "unknown_labels": Counter(),
    }


def _read_file(src: _Source, spec: RowFormat, recipe: Recipe, cache_root: Path | None,
               log: Callable[[str], None]) -> tuple[list[_Row], dict[str, Any], set[str]]:
    """Check, load and clean one file: its rows, its counts, and the set of its keys."""
    d = recipe.data
    skip = d.on_bad_rows == "skip"
    scan = _scan(src, skip, cache_root)
    counts = _new_counts(src)
    if src.fmt != "parquet" and scan.rows == len(scan.skipped):  # datasets can't load 0 rows
        counts["rows_read"] = counts["dropped_bad"] = scan.rows
        raise DataError(_empty_message(src, counts, spec))
    digest = content_digest(src.path)
    counts["fingerprint"] = digest
    if scan.needs_copy:
        scan.copy = _make_copy(src, cache_root, digest)
    ds = _load(src, scan, cache_root, digest)
    counts["rows_read"] = len(ds) + len(scan.skipped)
    counts["dropped_bad"] = len(scan.skipped)
    examples = [f"{p.where()} {p.what}" for p in scan.skipped[:_EXAMPLES]]

    columns = list(ds.column_names)
    spec = spec.for_columns(recipe, src, columns)
    needed: list[str] = []
    for key, col in spec.columns:
        if col not in columns:
            raise DataError(_missing_column(src, key, col, columns))
        if col not in needed:
            needed.append(col)

    # Original data row number / first line of each loaded row, for messages.
    row_numbers = scan.kept_rows() if scan.skipped else iter(range(1, len(ds) + 1))
    lines = scan.lines

    def where(row: int, column: str) -> str:
        line = lines[row - 1] if lines is not None and row - 1 < len(lines) else None
        return _Problem(row, line, "", column).where()

    rows: list[_Row] = []
    seen: set[str] = set()
    index = 0
    for batch in ds.select_columns(needed).iter(batch_size=2048):
        n = len(batch[needed[0]])
        for i in range(n):
            index += 1
            row_no = next(row_numbers, None) or index
            try:
                row = spec.make_row(recipe, {c: batch[c][i] for c in needed})
            except _BadRow as bad:
                if not skip:
                    raise DataError(f"{src.name}: {where(row_no, bad.column)} {bad.what}; "
                                    f"fix the row, {SKIP_HINT}") from None
                counts["dropped_bad"] += 1
                if len(examples) < _EXAMPLES:
                    examples.append(f"{where(row_no, bad.column)} {bad.what}")
                continue
            except _Unknown as unk:
                if unk.case_of is not None:
                    raise DataError(f"{src.name}: {where(row_no, d.label_column)} value {unk.value!r} "
                                    f"differs only in case from {unk.case_of!r} in task.labels; "
                                    f"write task.labels with the data's spelling "
                                    f"({unk.value!r})") from None
                if d.unknown_labels == "error":
                    column, allowed, key = spec.unknown_target(recipe)
                    raise DataError(f"{src.name}: {where(row_no, column)} value {unk.value!r} is not "
                                    f"one of {', '.join(allowed)}; add it to {key}, fix the row, or "
                                    f"set data.unknown_labels = \"drop\"") from None
                counts["dropped_unknown_label"] += 1
                counts["unknown_labels"][unk.value] += 1
                continue
            if row is None:
                counts["dropped_empty"] += 1
                continue
            if d.drop_duplicates:
                if row.key in seen:
                    counts["dropped_duplicate"] += 1
                    continue
                seen.add(row.key)
            rows.append(row)
    if examples:
        log(f"data {src.key}: skipped {counts['dropped_bad']} bad row(s) in {src.path.name}, "
            f"e.g. {'; '.join(examples)}")
    if not rows:
        raise DataError(_empty_message(src, counts, spec))
    return rows, counts, seen  # `seen` is empty unless drop_duplicates


def _cell_text(value: Any, column: str) -> str:
    try:
        text = _as_text(value)
    except ValueError as exc:
        raise _BadRow(str(exc), column) from None
    if text is None:
        raise _BadRow("is null (no text)", column)
    return text.strip()


# ---------------------------------------------------------------------------- messages


def _missing_column(src: _Source, key: str, col: str, columns: list[str]) -> str:
    where = "in the header row (line 1)" if src.fmt == "csv" else (
        "in any row" if src.fmt == "json" else "in the file's schema")
    return f"{src.name}: no column '{col}' {where} for {key}{_column_choices(key, col, columns)}"


def _column_choices(key: str, col: str, columns: list[str]) -> str:
    """What follows a missing column's name: a did-you-mean, the file's columns, the fix."""
    fix = (f"fix the {{{col}}} field of data.prompt_template" if key == "data.prompt_template"
           else f"set {key} to one of them")
    return f"{did_you_mean(col, columns)}; the columns are: {', '.join(columns) or '(none)'}; {fix}"


def _empty_message(src: _Source, counts: dict[str, Any], spec: RowFormat) -> str:
    if counts["rows_read"] == 0:
        return (f"{src.name}: {src.key} has no data rows (only a header, or nothing); "
                "add rows or point at another file")
    what = spec.target_noun
    allowed = (f"data.response_map's keys {list(spec.response_map)}" if spec.response_map
               else f"task.labels {spec.declared}")
    unknown = f"{counts['dropped_unknown_label']} {what} not in {allowed}"
    if counts["unknown_labels"]:
        unknown += f" (e.g. {', '.join(map(repr, list(counts['unknown_labels'])[:3]))})"
    steps = [(counts["dropped_bad"], f"{counts['dropped_bad']} bad"),
             (counts["dropped_unknown_label"], unknown),
             (counts["dropped_empty"], f"{counts['dropped_empty']} empty text"),
             (counts["dropped_duplicate"], f"{counts['dropped_duplicate']} duplicate"),
             (counts.get("dropped_in_train"), f"{counts.get('dropped_in_train')} also in the train file")]
    cols = ", ".join(dict.fromkeys(c for _k, c in spec.columns))
    return (f"{src.name}: no usable rows left in {src.key} after cleaning: read "
            f"{counts['rows_read']} row(s), removed {', '.join(t for n, t in steps if n)}; check "
            f"the columns ({cols}), task.labels and data.response_map")


def _summary(split: str, c: dict[str, Any]) -> str:
    parts = []
    for key, label in (("dropped_bad", "bad"), ("dropped_empty", "empty"),
                       ("dropped_unknown_label", "unknown label"),
                       ("dropped_duplicate", "duplicate"), ("dropped_in_train", "also in train"),
                       ("dropped_truncated", "too long for max_length")):
        if c.get(key):
            extra = ""
            if key == "dropped_unknown_label" and c["unknown_labels"]:
                extra = " (" + ", ".join(f"{k}: {v}" for k, v in list(c["unknown_labels"].items())[:3]) + ")"
            parts.append(f"{c[key]:,} {label}{extra}")
    text = f"data {split}: {Path(c['file']).name}"
    if c["source"].startswith("held out"):
        text += f" ({c['source']})"
    text += f": {c['rows_read']:,} rows read"
    if parts:
        text += "; dropped " + ", ".join(parts)
    if c.get("held_out"):
        text += f"; held out {c['held_out']:,} for eval"
    if c.get("capped"):
        text += f"; capped {c['capped']:,}"
    if c.get("truncated"):
        text += f"; {c['truncated']:,} truncated"
    text += f"; kept {c['kept']:,}"
    if c.get("label_counts"):
        text += " (" + ", ".join(f"{k} {v:,}" for k, v in c["label_counts"].items()) + ")"
    return text
