"""Reading: the raw check of a file (UTF-8, JSON/CSV records, bad rows named by file, row and
line), a cleaned copy when rows are skipped, and the load through `datasets`."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import lzma
import os
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, one_line
from .common import _CACHE_VERSION, _SURROGATE, SKIP_HINT
from .sources import _cache_root, _Source

if TYPE_CHECKING:
    import datasets


# ---------------------------------------------------------------------------- raw checks


@dataclass
class _Problem:
    row: int  # 1-based data row (header excluded, blank lines not counted)
    line: int | None  # 1-based line of the (decompressed) file where the row starts
    what: str
    column: str | None = None

    def where(self) -> str:
        line = f" (line {self.line})" if self.line is not None and self.line != self.row else ""
        col = f", column '{self.column}'" if self.column else ""
        return f"data row {self.row}{line}{col}"


@dataclass
class _Scan:
    """What the raw check found; `copy` is a cleaned file to load instead, if one was needed."""

    columns: list[str] | None = None
    rows: int = 0
    skipped: list[_Problem] = field(default_factory=list)
    lines: array | None = None  # first line of each data row (index = row - 1)
    needs_copy: bool = False
    copy: Path | None = None

    def kept_rows(self) -> Iterator[int]:
        """Original data row numbers of the rows that were loaded, in order."""
        bad = {p.row for p in self.skipped}
        return (r for r in range(1, self.rows + 1) if r not in bad)


class _Lines:
    """A binary file's lines as text; bytes that are not UTF-8 are kept (surrogateescape)
    and their places remembered, so the caller can say which line, byte and column."""

    def __init__(self, fh, offset: int = 0):
        self.fh = fh
        self.line = 0
        self.offset = offset
        self.bad: list[tuple[int, int]] = []  # (line, byte offset)

    def __iter__(self) -> Iterator[str]:
        for raw in self.fh:
            self.line += 1
            start = self.offset
            self.offset += len(raw)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.bad.append((self.line, start + exc.start))
                yield raw.decode("utf-8", "surrogateescape")


def _utf8_problem(line: int, offset: int, src: _Source) -> str:
    where = " of the decompressed data" if src.compression else ""
    return f"is not UTF-8 text (line {line}, byte offset {offset}{where})"


_UTF8_SAVE = "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 IN > OUT)"
_UTF8_FIX = f"{_UTF8_SAVE}, {SKIP_HINT}"


def _scan(src: _Source, skip: bool, cache_root: Path | None) -> _Scan:
    try:
        if src.fmt == "csv":
            scan = _scan_csv(src, skip)
        elif src.fmt == "json":
            scan = _scan_json(src, skip)
        else:
            return _Scan()
    except (OSError, EOFError, lzma.LZMAError) as exc:  # a corrupt .gz/.bz2, unreadable file
        kind = f"a valid {src.compression} file" if src.compression else "readable"
        raise DataError(f"{src.name}: {src.key} is not {kind} ({one_line(exc)}); "
                        "check the file (re-download or re-compress it)") from None
    return scan


def _csv_header_names(header: list[str], delimiter: str) -> list[str]:
    """The column names pandas (and so `datasets`) will give this header (dupes → 'a.1')."""
    import pandas as pd

    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter).writerow(header)
    return [str(c) for c in pd.read_csv(io.StringIO(buf.getvalue()), sep=delimiter, nrows=0,
                                        keep_default_na=False).columns]


# The largest CSV cell read (characters): far beyond what any max_length keeps, yet a 1 GB
# cell would end in MemoryError minutes later. A larger one is a bad row, named.
CSV_FIELD_LIMIT = 64 * 2**20


def _csv_records(src: _Source) -> Iterator[tuple[Any, ...]]:
    """Yield ('header', record) then (row, line, record | None, problem | None) per data row."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with src.open() as fh:
        lines = _Lines(fh, src.bom)
        reader = csv.reader(lines, delimiter=src.delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{src.name}: {src.key} is empty (no header row); "
                            "a CSV file needs a header naming its columns") from None
        except csv.Error as exc:
            raise DataError(f"{src.name}: the header row (line 1) cannot be parsed as CSV "
                            f"({one_line(exc)}); fix the first line") from None
        if lines.bad:
            line, offset = lines.bad[0]
            raise DataError(f"{src.name}: the header row {_utf8_problem(line, offset, src)}; "
                            f"{_UTF8_SAVE}")
        if not any(h.strip() for h in header):
            raise DataError(f"{src.name}: the header row (line 1) is blank; the first line of a "
                            "CSV file must name its columns")
        yield ("header", header)
        row, prev = 0, lines.line
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row += 1
                yield (row, prev + 1, None, _Problem(row, prev + 1, f"cannot be parsed as CSV "
                                                     f"({one_line(exc)})"))
                prev = lines.line
                lines.bad.clear()
                continue
            first, prev = prev + 1, lines.line
            if not record and not lines.bad:
                continue  # a blank line (pandas skips them too)
            row += 1
            if lines.bad:
                line, offset = lines.bad[0]
                lines.bad.clear()
                idx = next((i for i, f in enumerate(record) if _SURROGATE.search(f)), None)
                col = header[idx] if idx is not None and idx < len(header) else None
                yield (row, first, None, _Problem(row, first, _utf8_problem(line, offset, src), col))
            elif len(record) != len(header):
                hint = ""
                if first != prev:
                    hint = f"; it spans lines {first}-{prev}: an unclosed quote?"
                elif len(record) > len(header):
                    hint = "; quote fields that contain the delimiter"
                elif len(record) == 1 and not record[0].strip():
                    hint = "; a line of only spaces?"
                what = (f"has {len(record)} field(s) but the header has {len(header)} "
                        f"({', '.join(header)}){hint}")
                yield (row, first, None, _Problem(row, first, what))
            else:
                yield (row, first, record, None)


def _scan_csv(src: _Source, skip: bool) -> _Scan:
    lines: array[int] = array("L")
    scan = _Scan(lines=lines)
    records = _csv_records(src)
    header = next(records)[1]
    scan.columns = _csv_header_names(header, src.delimiter)
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:  # pandas would read the first and rename the next 'x.1': which one is meant?
        raise DataError(f"{src.name}: {src.key}'s header names the column '{twice[0]}' "
                        f"{header.count(twice[0])} times; rename all but one")
    for row, line, _record, problem in records:
        scan.rows = row
        lines.append(line)
        if problem is not None:
            if not skip:
                raise DataError(f"{src.name}: {problem.where()} {problem.what}; "
                                f"{_UTF8_FIX if 'UTF-8' in problem.what else 'fix the row, ' + SKIP_HINT}")
            scan.skipped.append(problem)
    scan.needs_copy = bool(scan.skipped)
    return scan


def _write_csv_copy(src: _Source, dest: Path) -> None:
    with _atomic(dest, "w") as out:
        writer = csv.writer(out, delimiter=src.delimiter, lineterminator="\n")
        for item in _csv_records(src):
            if item[0] == "header":
                writer.writerow(item[1])
            elif item[2] is not None:
                writer.writerow(item[2])


def _json_lines(src: _Source) -> Iterator[tuple[int, int, bytes | None, _Problem | None]]:
    """Yield (row, line, raw line | None, problem | None) per non-blank line of a JSONL file."""
    with src.open() as fh:
        row = line = 0
        offset = src.bom
        for raw in fh:
            line += 1
            start = offset
            offset += len(raw)
            if not raw.strip():
                continue
            row += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                col = None
                try:
                    obj = json.loads(raw.decode("utf-8", "surrogateescape"))
                    if isinstance(obj, dict):
                        col = next((k for k, v in obj.items()
                                    if _SURROGATE.search(json.dumps(v, ensure_ascii=False))), None)
                except ValueError:
                    pass
                yield row, line, None, _Problem(row, line, _utf8_problem(line, start + exc.start, src), col)
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                pos = f" at character {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
                yield row, line, None, _Problem(row, line, f"is not valid JSON ({msg}{pos})")
                continue
            if not isinstance(obj, dict):
                yield row, line, None, _Problem(
                    row, line, f"is a JSON {type(obj).__name__}, not an object "
                    '(each line must be one {"column": value, ...} object)')
                continue
            yield row, line, raw if raw.endswith(b"\n") else raw + b"\n", None


def _scan_json(src: _Source, skip: bool) -> _Scan:
    with src.open() as fh:
        head = fh.read(4096)
    if head.lstrip()[:1] == b"[":
        return _scan_json_array(src)
    lines: array[int] = array("L")
    scan = _Scan(lines=lines)
    blank_lines = False
    for row, line, _raw, problem in _json_lines(src):
        scan.rows = row
        lines.append(line)
        if line != row:
            blank_lines = True
        if problem is not None:
            if not skip:
                fix = (_UTF8_FIX if "UTF-8" in problem.what else
                       "make each line one JSON object (JSON Lines), " + SKIP_HINT)
                raise DataError(f"{src.name}: {problem.where()} {problem.what}; {fix}")
            scan.skipped.append(problem)
    # datasets' mixed-type JSON reader trips over blank lines: a copy without them then.
    scan.needs_copy = bool(scan.skipped or blank_lines)
    return scan


def _scan_json_array(src: _Source) -> _Scan:
    with src.open() as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{src.name}: {src.key} (one JSON array) {_utf8_problem(line, exc.start, src)}; "
                        "re-save the file as UTF-8 (rows of one JSON array cannot be skipped)") from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{src.name}: {src.key} is not valid JSON at line {exc.lineno} character "
                        f"{exc.colno} ({exc.msg}); fix it, or write JSON Lines (one object per "
                        "line) so bad rows can be skipped") from None
    if not isinstance(items, list):
        raise DataError(f"{src.name}: {src.key} is JSON but not an array of objects")
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise DataError(f"{src.name}: data row {i} (element {i} of the JSON array) is a JSON "
                            f"{type(item).__name__}, not an object; every element must be "
                            '{"column": value, ...}')
    return _Scan(rows=len(items))


def _write_json_copy(src: _Source, dest: Path) -> None:
    with _atomic(dest, "wb") as out:
        for _row, _line, raw, _problem in _json_lines(src):
            if raw is not None:
                out.write(raw)


@contextmanager
def _atomic(dest: Path, mode: str):
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    kwargs: dict[str, Any] = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
    try:
        with open(tmp, mode, **kwargs) as out:
            yield out
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def content_digest(path: Path) -> str:
    """What the data is, not when it was saved: size + BLAKE2b of the bytes (about 1 GB/s).
    Keys every cache, so a file edited in place with its mtime kept is never read stale."""
    h = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 23):
            h.update(chunk)
    return f"{path.stat().st_size:x}-{h.hexdigest()}"


def _make_copy(src: _Source, cache_root: Path | None, digest: str) -> Path:
    """A cleaned copy in the cache, named by the file's content so reruns reuse it (and
    datasets' Arrow cache for it)."""
    ident = f"{_CACHE_VERSION}|{src.path.resolve()}|{digest}|{src.fmt}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:24]
    name = src.path.name[: -len(src.compression)] if src.compression else src.path.name
    if src.fmt == "json" and not name.endswith((".jsonl", ".json")):
        name += ".jsonl"
    dest = _cache_root(cache_root) / "pefttool-clean" / digest / name
    if not dest.exists():
        (_write_csv_copy if src.fmt == "csv" else _write_json_copy)(src, dest)
    return dest


# ---------------------------------------------------------------------------- load


@contextmanager
def _quiet_datasets():
    import datasets
    from datasets.utils import logging as ds_logging
    from datasets.utils.tqdm import are_progress_bars_disabled

    bars_were_on = not are_progress_bars_disabled()
    verbosity = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def _load(src: _Source, scan: _Scan, cache_root: Path | None, digest: str) -> datasets.Dataset:
    """Load through datasets, with its Arrow cache in a folder named by the file's content:
    datasets keys its own cache on the file's path and modification time only."""
    import datasets

    path = scan.copy or src.path
    kwargs: dict[str, Any] = {}
    if src.fmt == "csv":
        # Every cell as the text written in the file: no "NA"/"null" → missing, no int/float
        # guessing that would turn label "01" into 1 or a text "1e5" into 100000.0.
        assert scan.columns is not None  # _scan_csv read the header
        kwargs = dict(keep_default_na=False, sep=src.delimiter,
                      features=datasets.Features({c: datasets.Value("string") for c in scan.columns}))
    cache = str(_cache_root(cache_root) / "pefttool-by-content" / digest)
    try:
        return datasets.load_dataset(src.fmt, data_files=str(path), split="train",
                                     cache_dir=cache, **kwargs)
    except DataError:
        raise
    except Exception as exc:  # datasets/pyarrow/pandas errors carry no row: say what we know
        raise DataError(f"{src.name}: {src.key} cannot be read as {src.fmt} "
                        f"({type(exc).__name__}: {one_line(exc)}); check the file or set "
                        "data.format") from None
