"""Several training files with weights: `data.train = [{path, weight, max_rows, ...}, ...]`.

Each source is read and cleaned as a file of its own (its own columns and template where it
sets them, its own bad rows and counts), a row also in an earlier source counts as a duplicate
there (data.drop_duplicates), `max_rows` keeps that many of its rows (drawn with data.seed),
and the held-out split (without data.eval) is taken from all of them before any weighting, so
no repeated row is ever both trained and evaluated on. Then each source's training rows go into
an epoch `weight` times: 0.5 half of them, 2 each of them twice, 1.5 each once and half again,
the part drawn with data.seed. The result is one fixed list of rows, shuffled with data.seed: an
epoch draws from each source in proportion, and a resumed run sees the same epochs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cleaning import _read_file
from .sources import _source

if TYPE_CHECKING:
    from ..recipe import Recipe
    from .cleaning import _Row
    from .formats import RowFormat


# counts that add up over sources (the rest are the first source's, or lists)
_SUMMED = ("rows_read", "dropped_bad", "dropped_empty", "dropped_unknown_label", "dropped_duplicate",
           "capped")


def read_sources(recipe: Recipe, tokenizer: Any, make_spec: Callable[[Recipe], RowFormat],
                 cache_root: Path | None, log: Callable[[str], None]
                 ) -> tuple[list[_Row], list[int], dict[str, Any], set[str]]:
    """Every source of data.train read and cleaned: the rows, each row's source index, the
    counts (summed, with a `sources` list of each one's), and the keys of all rows."""
    d = recipe.data
    rows: list[_Row] = []
    origin: list[int] = []
    keys: set[str] = set()
    per_source: list[dict[str, Any]] = []
    total: dict[str, Any] | None = None
    for i, source in enumerate(d.sources):
        own = recipe.for_source(source)
        spec = make_spec(own)
        spec.prepare(own, tokenizer)
        src = _source(own, f"data.train[{i}]", source.path)
        got, counts, got_keys = _read_file(src, spec, own, cache_root, log)
        if d.drop_duplicates and keys:
            before = len(got)
            got = [r for r in got if r.key not in keys]
            counts["dropped_duplicate"] += before - len(got)
        if source.max_rows is not None and len(got) > source.max_rows:
            random.Random(d.seed + 7919 * (i + 1)).shuffle(got)
            counts["capped"] += len(got) - source.max_rows
            del got[source.max_rows:]
        keys |= got_keys
        rows += got
        origin += [i] * len(got)
        per_source.append({"file": src.name, "rows": len(got), "weight": source.weight,
                           "max_rows": source.max_rows, "fingerprint": counts.get("fingerprint"),
                           "dropped": sum(counts[k] for k in _SUMMED if k.startswith("dropped"))})
        if total is None:
            total = counts
        else:
            for k in _SUMMED:
                total[k] += counts[k]
            total["unknown_labels"].update(counts["unknown_labels"])
    assert total is not None   # (validation refuses an empty list)
    total["file"] = " + ".join(Path(s["file"]).name for s in per_source)
    total["fingerprint"] = "+".join(str(s["fingerprint"]) for s in per_source)
    total["sources"] = per_source
    return rows, origin, total, keys


def weigh(recipe: Recipe, rows: list[_Row], origin: list[int], counts: dict[str, Any],
          log: Callable[[str], None]) -> list[_Row]:
    """Each source's training rows `weight` times (the fraction drawn with data.seed), then
    shuffled together with data.seed: the rows of an epoch. Logs one line per source."""
    d = recipe.data
    groups: dict[int, list[_Row]] = {i: [] for i in range(len(d.sources))}
    for row, i in zip(rows, origin):
        groups[i].append(row)
    out: list[_Row] = []
    parts = []
    for i, source in enumerate(d.sources):
        group = groups[i]
        drawn = round(source.weight * len(group))
        whole, extra = divmod(drawn, len(group)) if group else (0, 0)
        picked = group * whole + random.Random(d.seed + 104729 * (i + 1)).sample(group, extra)
        out += picked
        counts["sources"][i]["train_rows"] = len(group)
        counts["sources"][i]["drawn"] = len(picked)
        parts.append(f"{Path(counts['sources'][i]['file']).name} {len(group):,} × {source.weight:g} → {len(picked):,}")
    random.Random(d.seed + 2).shuffle(out)
    log(f"data train sources: {'; '.join(parts)}; {len(out):,} rows an epoch")
    return out

