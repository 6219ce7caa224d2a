"""What a run writes besides checkpoints and model/: metrics.json (before/best metrics, data
counts, timings) and samples.jsonl (replies to held-out prompts before training and at the best
evaluation, side by side). Each is rewritten whole, atomically."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from .rundir import METRICS_FILE, SAMPLES_FILE, replace_file


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    replace_file(run_dir / METRICS_FILE, json.dumps(metrics, indent=1))


class SampleReplies:
    """samples.jsonl: for each held-out prompt its reference and the replies recorded so far
    ("before", "after" with "after_step"). A resumed run keeps the replies written before it
    stopped."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / SAMPLES_FILE
        self._kept: dict[int, dict[str, Any]] | None = None

    def _read(self) -> dict[int, dict[str, Any]]:
        kept: dict[int, dict[str, Any]] = {}
        if self.path.is_file():
            for i, line in enumerate(self.path.read_text(encoding="utf-8").splitlines()):
                with contextlib.suppress(ValueError):
                    kept[i] = json.loads(line)
        return kept

    def record(self, rows: list[dict[str, Any]], when: str, step: int) -> None:
        """`rows`: {prompt, reference, reply} per prompt, replies made `when` (before/after)."""
        if self._kept is None:
            self._kept = self._read()
        for i, row in enumerate(rows):
            entry = self._kept.setdefault(i, {"prompt": row["prompt"], "reference": row["reference"]})
            entry[when] = row["reply"]
            if when == "after":
                entry["after_step"] = step
        replace_file(self.path, "".join(json.dumps(e, ensure_ascii=False) + "\n"
                                        for e in self._kept.values()))
