"""Data: local files → cleaned, split, tokenized datasets the engine can batch.

The pipeline, for the train file and (if given) the eval file:

1. **check** the raw file ourselves, streaming (decompressing .bz2/.gz/.xz): UTF-8, one JSON
   object per line / the right number of CSV fields per record. Bad rows stop the run with a
   one-line `DataError` naming file, data row, line and column, or (``on_bad_rows = "skip"``)
   are counted and left out of a cleaned copy written into the datasets cache.
2. **load** through `datasets.load_dataset("csv" | "json" | "parquet")` (Arrow cache, offline).
   CSV cells are read as text exactly as written (no "NA" → null guessing).
3. **clean**, counting each step: null text/label (bad), strip whitespace, empty text,
   label outside the declared set (dropped and counted: Rotten Tomatoes' ``plot`` rows),
   duplicate texts (before any split, so nothing leaks across).
4. **split**: the eval file (rows also in train dropped), or a seeded held-out
   ``eval_fraction`` of train; then ``max_train_rows`` / ``max_eval_rows`` caps on the seeded
   shuffle.
5. **tokenize** with `Dataset.map(batched=True)`: classification → (input_ids,
   attention_mask, labels:int); causal-lm instruction → prompt (chat template) + response + eos
   with the loss masked (-100) on prompt tokens; plain text → labels = input_ids.

Every count lands in `PreparedData.stats` and one log line per split.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import re
import string
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DataError, did_you_mean
from .locations import LocationError

if TYPE_CHECKING:  # heavy imports stay lazy: `pefttool validate` must not pay for them
    import datasets
    import torch

    from .recipe import Recipe

IGNORE_INDEX = -100
COMPRESSIONS = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}
EXTENSIONS = {
    ".csv": "csv", ".tsv": "csv",
    ".json": "json", ".jsonl": "json", ".ndjson": "json",
    ".parquet": "parquet", ".pq": "parquet",
}
SKIP_HINT = 'or set data.on_bad_rows = "skip" to drop such rows'
_SURROGATE = re.compile("[\udc80-\udcff]")
_INT = re.compile(r"[+-]?\d+")
_EXAMPLES = 3  # skipped rows described in the log, per file
_CACHE_VERSION = "1"  # bump when the cleaned-copy format changes


# ---------------------------------------------------------------------------- public API


def count_tokens(batch: dict[str, Any]) -> int:
    """Non-pad tokens in a collated batch (for tokens/s)."""
    return int(batch["attention_mask"].sum())


@dataclass
class Collator:
    """Pads a list of rows to the longest in the batch (right padding).

    Classification labels become a 1-D tensor; sequence labels are padded with -100 so the
    loss ignores padding. A plain class (not a closure) so DataLoader workers can pickle it.
    """

    pad_id: int
    sequence_labels: bool

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        if not rows:
            raise ValueError("cannot collate an empty batch")
        longest = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        labels = (torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
                  if self.sequence_labels else None)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            if labels is not None:
                labels[i, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
        if labels is None:
            labels = torch.as_tensor([int(r["labels"]) for r in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class PreparedData:
    """What the engine trains and evaluates on.

    `train`/`eval` hold input_ids, attention_mask and labels (an int per row for
    classification, a list with -100 on prompt tokens for causal-lm). For causal-lm
    instruction data, `eval_prompts[i]` is the prompt exactly as rendered for training (chat
    template applied), `eval_prompt_ids[i]` its token ids (feed these to `generate`; they
    include any BOS), and `eval_answers[i]` the reference response, for exact match.
    """

    train: datasets.Dataset
    eval: datasets.Dataset
    label_names: list[str] | None
    stats: dict[str, dict[str, Any]]
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    eval_prompts: list[str] | None = None
    eval_answers: list[str] | None = None
    eval_prompt_ids: list[list[int]] | None = None

    @staticmethod
    def token_count(batch: dict[str, Any]) -> int:
        return count_tokens(batch)


def prepare_data(
    recipe: Recipe,
    tokenizer: Any,
    log: Callable[[str], None] = print,
    *,
    cache_dir: str | Path | None = None,
) -> PreparedData:
    """Load, clean, split and tokenize the recipe's data; bad data raises `DataError`.

    `cache_dir` is where `datasets` keeps its Arrow cache and where cleaned copies of files with
    skipped rows go (default: the datasets cache, ~/.cache/huggingface/datasets).
    """
    # Local files only: keep `datasets` off the network (it reads this when first imported).
    # HF_HUB_OFFLINE is left alone: the model may still come from the hub.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    d = recipe.data
    spec = _Spec.from_recipe(recipe)
    cache_root = Path(cache_dir) if cache_dir is not None else None

    with _quiet_datasets():
        train_src = _source(recipe, "data.train", d.train)
        train_rows, train_counts, train_keys = _read_file(train_src, spec, recipe, cache_root, log)

        label_names = spec.label_names(train_rows) if spec.kind == "classification" else None
        if label_names is not None and len(label_names) < 2:
            raise DataError(
                f"{train_src.name}: column '{d.label_column}' has only one label value "
                f"({label_names[0]!r}) after cleaning; a classification task needs at least 2 "
                "(check data.label_column and task.labels)")

        rng = random.Random(d.seed)
        if d.eval is not None:
            eval_src = _source(recipe, "data.eval", d.eval)
            eval_rows, eval_counts, _ = _read_file(eval_src, spec, recipe, cache_root, log)
            if d.drop_duplicates:
                before = len(eval_rows)
                eval_rows = [r for r in eval_rows if r.key not in train_keys]
                eval_counts["dropped_in_train"] = before - len(eval_rows)
            if label_names is not None and recipe.task.labels is None:
                known = set(label_names)
                before = len(eval_rows)
                unknown = Counter(r.label for r in eval_rows if r.label not in known)
                eval_rows = [r for r in eval_rows if r.label in known]
                eval_counts["dropped_unknown_label"] += before - len(eval_rows)
                eval_counts["unknown_labels"].update(unknown)
            if not eval_rows:
                raise DataError(_empty_message(eval_src, eval_counts, spec))
            rng.shuffle(train_rows)
            random.Random(d.seed + 1).shuffle(eval_rows)
        else:
            if len(train_rows) < 2:
                raise DataError(
                    f"{train_src.name}: only {len(train_rows)} usable row(s) after cleaning; "
                    "need at least 2 to hold out an eval split (add rows or set data.eval)")
            rng.shuffle(train_rows)
            n_eval = min(max(1, round(len(train_rows) * d.eval_fraction)), len(train_rows) - 1)
            eval_rows, train_rows = train_rows[:n_eval], train_rows[n_eval:]
            train_counts["held_out"] = n_eval
            eval_counts = _new_counts(train_src, source=f"held out {d.eval_fraction:.0%} of train, "
                                      f"seed {d.seed}")
            eval_counts["rows_read"] = n_eval

        for rows, counts, cap in ((train_rows, train_counts, d.max_train_rows),
                                  (eval_rows, eval_counts, d.max_eval_rows)):
            if cap is not None and len(rows) > cap:
                counts["capped"] = len(rows) - cap
                del rows[cap:]

        encoder = _Encoder(tokenizer, recipe, label_names)
        train_ds = encoder.encode(train_rows, train_counts, "train")
        eval_ds = encoder.encode(eval_rows, eval_counts, "eval")
        for split, ds, counts in (("train", train_ds, train_counts), ("eval", eval_ds, eval_counts)):
            if len(ds) == 0:
                raise DataError(
                    f"{counts['file']}: no {split} rows left: every prompt is at least "
                    f"data.max_length = {d.max_length} tokens, so no response token fits "
                    f"({counts['dropped_truncated']} row(s) dropped); raise data.max_length")

    prompts = answers = prompt_ids = None
    if spec.kind == "instruction":
        prompts, answers, prompt_ids = encoder.eval_prompts, encoder.eval_answers, encoder.eval_prompt_ids

    for split, counts in (("train", train_counts), ("eval", eval_counts)):
        counts["kept"] = len(train_ds) if split == "train" else len(eval_ds)
        if label_names is not None:
            ds = train_ds if split == "train" else eval_ds
            by_id = Counter(list(ds["labels"]))
            counts["label_counts"] = {name: by_id.get(i, 0) for i, name in enumerate(label_names)}
        counts["unknown_labels"] = dict(counts["unknown_labels"].most_common(10))
        log(_summary(split, counts))

    return PreparedData(
        train=train_ds,
        eval=eval_ds,
        label_names=label_names,
        stats={"train": train_counts, "eval": eval_counts},
        collate=Collator(pad_id=encoder.pad_id, sequence_labels=spec.kind != "classification"),
        eval_prompts=prompts,
        eval_answers=answers,
        eval_prompt_ids=prompt_ids,
    )


# ---------------------------------------------------------------------------- sources


@dataclass
class _Source:
    key: str  # data.train | data.eval
    location: str
    path: Path
    fmt: str  # csv | json | parquet
    delimiter: str = ","
    compression: str | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    def open(self):
        opener = COMPRESSIONS.get(self.compression or "", None)
        return opener(self.path, "rb") if opener else open(self.path, "rb")


def _source(recipe: Recipe, key: str, location: str) -> _Source:
    try:
        path = recipe.resolve_path(location)
    except LocationError as exc:
        raise DataError(f"{key}: {exc}") from None
    if not path.exists():
        looked = (f"looked in {recipe.base_dir} and {Path.cwd()}" if not path.is_absolute()
                  else "fix the path")
        raise DataError(f"{path}: {key} file does not exist ({looked}); fix the path in the recipe")
    if path.is_dir():
        raise DataError(f"{path}: {key} is a directory; name a CSV, JSONL or Parquet file")
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    ext = suffixes[-1] if suffixes else ""
    fmt = recipe.data.format
    if fmt == "auto":
        if ext not in EXTENSIONS:
            raise DataError(
                f"{path}: cannot tell the format of {key} from its extension '{ext or '(none)'}'; "
                "rename it (.csv, .tsv, .jsonl, .json, .parquet, optionally + .gz/.bz2) "
                "or set data.format")
        fmt = EXTENSIONS[ext]
    return _Source(key, location, path, fmt, "\t" if ext == ".tsv" else ",", compression)


def _cache_root(cache_root: Path | None) -> Path:
    if cache_root is not None:
        return cache_root
    import datasets.config

    return Path(datasets.config.HF_DATASETS_CACHE)


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

    def __init__(self, fh):
        self.fh = fh
        self.line = 0
        self.offset = 0
        self.bad: list[tuple[int, int]] = []  # (line, byte offset)

    def __iter__(self) -> Iterator[str]:
        for raw in self.fh:
            self.line += 1
            start = self.offset
            self.offset += len(raw)
            if self.line == 1 and raw.startswith(codecs.BOM_UTF8):
                raw, start = raw[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
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
        raise DataError(f"{src.name}: {src.key} is not {kind} ({_one_line(exc)}); "
                        "check the file (re-download or re-compress it)") from None
    return scan


def _csv_header_names(header: list[str], delimiter: str) -> list[str]:
    """The column names pandas (and so `datasets`) will give this header (dupes → 'a.1')."""
    import pandas as pd

    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter).writerow(header)
    return [str(c) for c in pd.read_csv(io.StringIO(buf.getvalue()), sep=delimiter, nrows=0,
                                        keep_default_na=False).columns]


def _csv_records(src: _Source) -> Iterator[tuple[Any, ...]]:
    """Yield ('header', record) then (row, line, record | None, problem | None) per data row."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with src.open() as fh:
        lines = _Lines(fh)
        reader = csv.reader(lines, delimiter=src.delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{src.name}: {src.key} is empty (no header row); "
                            "a CSV file needs a header naming its columns") from None
        except csv.Error as exc:
            raise DataError(f"{src.name}: the header row (line 1) cannot be parsed as CSV "
                            f"({_one_line(exc)}); fix the first line") from None
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
                                                     f"({_one_line(exc)})"))
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
    scan = _Scan(lines=array("L"))
    records = _csv_records(src)
    header = next(records)[1]
    scan.columns = _csv_header_names(header, src.delimiter)
    for row, line, _record, problem in records:
        scan.rows = row
        scan.lines.append(line)
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
        row = line = offset = 0
        for raw in fh:
            line += 1
            start = offset
            offset += len(raw)
            if line == 1 and raw.startswith(codecs.BOM_UTF8):
                raw, start = raw[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
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
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):]
    if head.lstrip()[:1] == b"[":
        return _scan_json_array(src)
    scan = _Scan(lines=array("L"))
    blank_lines = False
    for row, line, _raw, problem in _json_lines(src):
        scan.rows = row
        scan.lines.append(line)
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
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
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
    kwargs = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
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
                        f"({type(exc).__name__}: {_one_line(exc)}); check the file or set "
                        "data.format") from None


# ---------------------------------------------------------------------------- clean


@dataclass
class _Row:
    key: str  # what duplicates are judged by: the text, or the prompt
    text: str  # classification/plain text: the text; instruction: the prompt
    label: str | None = None  # classification: label name; instruction: the response


@dataclass
class _Spec:
    """Which columns a task reads, and how a raw row becomes a `_Row`."""

    kind: str  # classification | instruction | text
    columns: list[tuple[str, str]]  # (recipe key, column name) the task reads
    declared: list[str] | None  # the label set rows are checked against (None: any)
    template: str | None = None
    template_fields: list[str] = field(default_factory=list)
    response_map: dict[str, str] | None = None

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> _Spec:
        d, task = recipe.data, recipe.task
        if task.type == "classification":
            return cls("classification", [("data.text_column", d.text_column),
                                          ("data.label_column", d.label_column)], task.labels)
        if task.format == "text":
            return cls("text", [("data.text_column", d.text_column)], None)
        declared = list(d.response_map) if d.response_map else task.labels
        if d.prompt_template is None:
            cols = [("data.prompt_column", d.prompt_column), ("data.response_column", d.response_column)]
            return cls("instruction", cols, declared, response_map=d.response_map)
        fields_ = _template_fields(d.prompt_template)
        cols = [("data.prompt_template", f) for f in fields_] + [("data.response_column", d.response_column)]
        return cls("instruction", cols, declared, d.prompt_template, fields_, d.response_map)

    def label_names(self, rows: list[_Row]) -> list[str]:
        if self.declared is not None:
            return list(self.declared)
        return _sorted_labels({r.label for r in rows})


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


def _response(value: Any, spec: _Spec, column: str) -> str:
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


def _read_file(src: _Source, spec: _Spec, recipe: Recipe, cache_root: Path | None,
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
    text_col = recipe.data.text_column
    index = 0
    for batch in ds.select_columns(needed).iter(batch_size=2048):
        n = len(batch[needed[0]])
        for i in range(n):
            index += 1
            row_no = next(row_numbers, None) or index
            try:
                row = _make_row(spec, recipe, {c: batch[c][i] for c in needed}, text_col)
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
                    if recipe.task.type == "classification":
                        column, allowed, key = d.label_column, recipe.task.labels or [], "task.labels"
                    else:
                        column, allowed, key = d.response_column, list(d.response_map or {}), "data.response_map"
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


def _make_row(spec: _Spec, recipe: Recipe, values: dict[str, Any], text_col: str) -> _Row | None:
    """A raw row → `_Row`; None when its text is empty; raises _BadRow / _Unknown.

    Order of judgement (and so of counting): bad (null, not text, label id out of range),
    then label outside the declared set, then empty text.
    """
    d = recipe.data
    unknown: _Unknown | None = None
    if spec.kind in ("classification", "text"):
        text = _cell_text(values[text_col], text_col)
        label = None
        if spec.kind == "classification":
            try:
                label = _label(values[d.label_column], spec.declared, d.label_column)
            except _Unknown as exc:
                unknown = exc
        if unknown is not None:
            raise unknown
        return _Row(text, text, label) if text else None
    if spec.template is None:
        prompt = _cell_text(values[d.prompt_column], d.prompt_column)
    else:
        parts = {f: _cell_text(values[f], f) for f in spec.template_fields}
        try:
            prompt = spec.template.format(**parts).strip()
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            raise DataError(f"data.prompt_template: cannot be filled from the row's columns "
                            f"({type(exc).__name__}: {_one_line(exc)}); use plain {{column}} "
                            "fields") from None
        if not all(parts.values()):
            prompt = ""
    response = ""
    try:
        response = _response(values[d.response_column], spec, d.response_column)
    except _Unknown as exc:
        unknown = exc
    if unknown is not None:
        raise unknown
    return _Row(prompt, prompt, response) if prompt and response else None


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
    hint = did_you_mean(col, columns)
    where = "in the header row (line 1)" if src.fmt == "csv" else (
        "in any row" if src.fmt == "json" else "in the file's schema")
    fix = (f"fix the {{{col}}} field of data.prompt_template" if key == "data.prompt_template"
           else f"set {key} to one of them")
    return (f"{src.name}: no column '{col}' {where} for {key}{hint}; the columns are: "
            f"{', '.join(columns) or '(none)'}; {fix}")


def _empty_message(src: _Source, counts: dict[str, Any], spec: _Spec) -> str:
    if counts["rows_read"] == 0:
        return (f"{src.name}: {src.key} has no data rows (only a header, or nothing); "
                "add rows or point at another file")
    what = "response" if spec.kind == "instruction" else "label"
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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------------------- tokenize


class _Encoder:
    """Rows → tokenized `datasets.Dataset`s, the same way for train and eval."""

    def __init__(self, tokenizer: Any, recipe: Recipe, label_names: list[str] | None):
        self.tok = tokenizer
        self.recipe = recipe
        self.kind = _Spec.from_recipe(recipe).kind
        self.max_length = recipe.data.max_length
        self.label_ids = {n: i for i, n in enumerate(label_names or [])}
        pad = getattr(tokenizer, "pad_token_id", None)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = pad if pad is not None else (eos if eos is not None else 0)
        self.eos = [eos] if eos is not None else []
        self.use_chat = bool(recipe.data.chat_template and getattr(tokenizer, "chat_template", None))
        bos = getattr(tokenizer, "bos_token_id", None)
        self.bos: list[int] = []
        if bos is not None and not self.use_chat:
            # Only where the tokenizer itself would add it (Llama does, GPT-2 does not).
            if tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]:
                self.bos = [bos]
        self.eval_prompts: list[str] | None = None
        self.eval_answers: list[str] | None = None
        self.eval_prompt_ids: list[list[int]] | None = None
        self.fingerprint = hashlib.sha256(
            json.dumps(recipe.data.model_dump(mode="json"), sort_keys=True).encode()
            + str(getattr(tokenizer, "name_or_path", "")).encode()).hexdigest()[:16]

    def render(self, prompt: str) -> str:
        if self.use_chat:
            try:
                out = self.tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                   add_generation_prompt=True, tokenize=False)
            except Exception as exc:
                raise DataError(f"the tokenizer's chat template failed ({type(exc).__name__}: "
                                f"{_one_line(exc)}); set data.chat_template = false") from None
            return out if isinstance(out, str) else str(out)
        return prompt + "\n"

    def encode(self, rows: list[_Row], counts: dict[str, Any], split: str) -> datasets.Dataset:
        import datasets

        if self.kind == "classification":
            data = {"text": [r.text for r in rows], "label": [self.label_ids[r.label] for r in rows]}
            fn = self._classification
        elif self.kind == "text":
            data = {"text": [r.text for r in rows]}
            fn = self._plain
        else:
            data = {"prompt": [r.text for r in rows], "response": [r.label for r in rows]}
            fn = self._instruction
        ds = datasets.Dataset.from_dict(data)
        ds = ds.map(fn, batched=True, batch_size=1000, remove_columns=list(data),
                    new_fingerprint=f"pefttool-{self.fingerprint}-{split}")
        if self.kind == "classification":
            return ds
        counts["truncated"] = sum(list(ds["_truncated"]))
        if self.kind == "instruction":
            drop = list(ds["_drop"])
            counts["dropped_truncated"] = sum(drop)
            if split == "eval":
                kept = [i for i, dropped in enumerate(drop) if not dropped]
                prompt_lens = list(ds["_prompt_len"])
                all_ids = list(ds["input_ids"])
                self.eval_answers = [rows[i].label for i in kept]
                # With the BOS written out, tokenizing a prompt with add_special_tokens=False
                # gives exactly the ids training saw (`eval_prompt_ids`).
                bos_text = self.tok.bos_token if self.bos else ""
                self.eval_prompts = [bos_text + self.render(rows[i].text) for i in kept]
                self.eval_prompt_ids = [list(all_ids[i][: prompt_lens[i]]) for i in kept]
            if counts["dropped_truncated"]:
                ds = ds.filter(lambda batch: [not x for x in batch["_drop"]], batched=True,
                               new_fingerprint=f"pefttool-{self.fingerprint}-{split}-kept")
            ds = ds.remove_columns(["_drop", "_prompt_len"])
        return ds.remove_columns(["_truncated"])

    def _classification(self, batch: dict[str, list]) -> dict[str, list]:
        enc = self.tok(batch["text"], truncation=True, max_length=self.max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": batch["label"]}

    def _plain(self, batch: dict[str, list]) -> dict[str, list]:
        ids_list, truncated = [], []
        for ids in self.tok(batch["text"], add_special_tokens=False)["input_ids"]:
            ids = self.bos + ids + self.eos
            truncated.append(len(ids) > self.max_length)
            ids_list.append(ids[: self.max_length])
        return {"input_ids": ids_list, "attention_mask": [[1] * len(x) for x in ids_list],
                "labels": [list(x) for x in ids_list], "_truncated": truncated}

    def _instruction(self, batch: dict[str, list]) -> dict[str, list]:
        rendered = [self.render(p) for p in batch["prompt"]]
        prompts = self.tok(rendered, add_special_tokens=False)["input_ids"]
        responses = self.tok(batch["response"], add_special_tokens=False)["input_ids"]
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [],
                                "_drop": [], "_truncated": [], "_prompt_len": []}
        limit = self.max_length
        for p, r in zip(prompts, responses):
            p = self.bos + p
            r = r + self.eos
            drop = len(p) >= limit  # no room for a single response token
            room = max(0, limit - len(p))
            ids = [] if drop else p + r[:room]
            labels = [] if drop else [IGNORE_INDEX] * len(p) + r[:room]
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
            out["_drop"].append(drop)
            out["_truncated"].append(not drop and len(r) > room)
            out["_prompt_len"].append(len(p))
        return out
