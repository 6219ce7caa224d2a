"""Which file a recipe names, in which format and compression."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError
from ..locations import LocationError
from .common import COMPRESSIONS, EXTENSIONS

if TYPE_CHECKING:
    from ..recipe import Recipe


# ---------------------------------------------------------------------------- sources


@dataclass
class _Source:
    key: str  # data.train | data.eval
    location: str
    path: Path
    fmt: str  # csv | json | parquet
    delimiter: str = ","
    compression: str | None = None
    bom: int = 0  # bytes of UTF-8 BOM skipped by the last `open()`

    @property
    def name(self) -> str:
        return str(self.path)

    def open(self):
        """The file's (decompressed) bytes, past a leading UTF-8 BOM if there is one.

        `bom` is then the number of bytes skipped, so byte offsets can still be counted from
        the start of the file.
        """
        opener = COMPRESSIONS.get(self.compression or "", None)
        fh = opener(self.path, "rb") if opener else open(self.path, "rb")
        head = fh.read(len(codecs.BOM_UTF8))
        if head == codecs.BOM_UTF8:
            self.bom = len(head)
        else:
            fh.seek(0)
            self.bom = 0
        return fh


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
    fmt: str = recipe.data.format
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
