"""The recipe's columns against its data files' headers, read cheaply (no dataset is built).

`pefttool validate`, the TUI's Adjust screen (as the user types) and its recipe list call
`column_problems`: a misspelt `data.label_column` is then named in a second, not after the
model and the data have loaded. A CSV's header row, a Parquet file's schema, a JSONL file's
first rows (up to `JSON_ROWS` of them, within `JSON_BYTES`) are read; what cannot be read is
left to the full load, which names it (this check never refuses what it did not see).
"""

from __future__ import annotations

import csv
import io
import json
import lzma
from typing import Any

from ..errors import DataError
from .cleaning import _column_choices
from .reading import CSV_FIELD_LIMIT
from .sources import _Source, _source

JSON_ROWS = 200
JSON_BYTES = 4 * 2**20


def column_problems(recipe: Any) -> list[str]:
    """One line per column the recipe's row format needs and a data file lacks ([] when every
    file has them, or when a file's columns cannot be read cheaply). `recipe`: a validated one."""
    from ..tasks import get_task

    problems: list[str] = []
    d = recipe.data
    files = ([("data.train", recipe, d.train, {})] if isinstance(d.train, str) else
             [(f"data.train[{i}]", recipe.for_source(s), s.path, s.overrides()) for i, s in enumerate(d.sources)])
    for key, own, location, own_keys in [*files, ("data.eval", recipe, d.eval, {})]:
        if not location:
            continue
        try:
            src = _source(own, key, location)
            seen = _columns(src)
            if seen is None:
                continue
            columns, complete = seen
            spec = get_task(own).row_format(own).for_columns(own, src, columns)
        except DataError as exc:
            problems.append(str(exc))
            continue
        except (OSError, ValueError, EOFError, csv.Error, lzma.LZMAError):
            continue   # the full load reads it again and names what is wrong
        for col_key, col in dict.fromkeys(spec.columns):
            if col not in columns and complete:
                name = col_key.removeprefix("data.")
                named = f"{key}.{name}" if name in own_keys else col_key   # the source's own key
                problems.append(_missing(src, named, col, columns))
    return problems


def _missing(src: _Source, key: str, col: str, columns: list[str]) -> str:
    """A recipe problem (key first, as validation words them) for a column the file lacks."""
    where = "in the header row of" if src.fmt == "csv" else (
        "in the rows of" if src.fmt == "json" else "in the schema of")
    return f"{key}: no column '{col}' {where} {src.name}{_column_choices(key, col, columns)}"


def _columns(src: _Source) -> tuple[list[str], bool] | None:
    """The file's column names and whether they are all of them (a JSONL file read only in
    part may name more columns further down); None when they cannot be told cheaply."""
    if src.fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(src.path).names), True
    with src.open() as raw:
        if src.fmt == "csv":
            csv.field_size_limit(CSV_FIELD_LIMIT)
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            header = next(csv.reader(text, delimiter=src.delimiter), None)
            return (header, True) if header else None   # (a duplicate name: the full load says)
        head = raw.read(JSON_BYTES + 1)
    lines = head[:JSON_BYTES].decode("utf-8", errors="replace").splitlines()
    if len(head) > JSON_BYTES:
        lines = lines[:-1]   # the last one may be cut
    if lines and lines[0].lstrip().startswith("["):
        return None          # one JSON array: left to the full load
    keys: dict[str, None] = {}
    rows = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            keys.update(dict.fromkeys(row))
            rows += 1
        if rows >= JSON_ROWS:
            break
    if not rows:
        return None
    # Every row was seen (the whole file within the byte budget), or enough rows to call the
    # layout settled: rows of one file share their keys.
    return list(keys), rows >= JSON_ROWS or len(head) <= JSON_BYTES
