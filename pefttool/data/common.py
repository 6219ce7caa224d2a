"""Constants and small helpers shared by the data stages."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
from collections.abc import Callable

IGNORE_INDEX = -100
# suffix → its `open(path, mode)`; the data stages open with "rb": a BZ2File, GzipFile or LZMAFile
COMPRESSIONS: dict[str, Callable[..., io.BufferedIOBase]] = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}
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


