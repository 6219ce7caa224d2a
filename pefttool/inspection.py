"""What the model will be trained on, before anything trains: `pefttool inspect RECIPE`.

The rows come from the same data pipeline a run uses (`prepare_data`: read, clean, split,
render, tokenize), with the tokenizer only (no model weights load). For each shown row: the
rendered text, its token ids, and which tokens carry loss; for the whole train and eval
splits: the length distribution in tokens and how many rows truncation touched; and the
cleaning counts the run would log.

    inspect_recipe(recipe, rows=3, start=0, seed=None, multi_turn=False) -> DataPreview
        (.to_dict() for --json, format_text() for people)
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from .data.common import IGNORE_INDEX
from .tasks import get_task


@dataclass
class RowPreview:
    """One encoded training row."""

    text: str                      # the whole row decoded (template, prompt, response, specials)
    input_ids: list[int]
    tokens: int
    loss_tokens: int               # tokens whose next-token prediction is trained (labels != -100)
    spans: list[tuple[str, bool]]  # the text in pieces: (piece, carries loss)
    label: str | None = None       # classification: the label the row trains toward
    index: int = 0                 # its position in the train split (0-based)
    part: str = ""                 # which of a row's sequences (a preference pair: chosen, rejected)


@dataclass
class LengthStats:
    rows: int
    min: int
    median: float
    p95: int
    max: int
    at_max_length: int             # rows exactly data.max_length long (cut there, or just fitting)
    truncated: int | None = None   # causal-lm: rows whose response/text was cut to fit
    dropped_truncated: int | None = None  # instruction rows dropped: the prompt alone was too long


@dataclass
class DataPreview:
    recipe: str
    task: str
    format: str | None
    max_length: int
    rows: list[RowPreview]
    lengths: dict[str, LengthStats]
    cleaning: dict[str, dict[str, Any]]
    summary: list[str] = field(default_factory=list)   # the cleaning lines a run would log

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for row in out["rows"]:
            row["spans"] = [{"text": t, "loss": loss} for t, loss in row["spans"]]
        return out


def length_stats(lengths: list[int], max_length: int, counts: dict[str, Any]) -> LengthStats:
    ordered = sorted(lengths)
    n = len(ordered)
    p95 = ordered[min(n - 1, max(0, -(-95 * n // 100) - 1))] if n else 0   # nearest-rank
    return LengthStats(
        rows=n, min=ordered[0] if n else 0, median=float(statistics.median(ordered)) if n else 0.0,
        p95=p95, max=ordered[-1] if n else 0, at_max_length=sum(1 for x in ordered if x >= max_length),
        truncated=counts.get("truncated"), dropped_truncated=counts.get("dropped_truncated"))


def loss_spans(tokenizer: Any, ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """The row's text cut where loss starts or stops: (decoded piece, carries loss)."""
    spans: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            piece = tokenizer.decode(ids[start:i], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
            spans.append((piece, labels[start] != IGNORE_INDEX))
            start = i
    return spans


def loss_runs(labels: list[int]) -> int:
    """How many separate stretches of loss-bearing tokens a row has (a chat row: one per
    assistant reply)."""
    runs, inside = 0, False
    for x in labels:
        if (x != IGNORE_INDEX) and not inside:
            runs += 1
        inside = x != IGNORE_INDEX
    return runs


def pick_rows(data: Any, rows: int, start: int = 0, seed: int | None = None,
              multi_turn: bool = False) -> list[int]:
    """Which train rows to show: `rows` from `start` on, or (`seed` given) a seeded random
    sample; only rows with several loss-bearing replies with `multi_turn`."""
    import random

    candidates = list(range(len(data.train)))
    if multi_turn:
        candidates = [i for i, labels in enumerate(data.train["labels"]) if loss_runs(list(labels)) >= 2]
    if seed is not None:
        return sorted(random.Random(seed).sample(candidates, min(rows, len(candidates))))
    return candidates[start:start + rows]


def inspect_recipe(recipe: Any, rows: int = 3, start: int = 0, seed: int | None = None,
                   multi_turn: bool = False) -> DataPreview:
    """Encode the recipe's data as a run would (tokenizer only) and describe it: `rows` train
    rows from `start`, or a seeded random sample (`seed`), or only multi-turn rows."""
    from .data import prepare_data
    from .errors import PefttoolError
    from .models import load_tokenizer

    task = get_task(recipe)
    if multi_turn and not task.row_format(recipe).turns:
        kind = " ".join(filter(None, (recipe.task.type, recipe.task.format)))
        raise PefttoolError(f"--multi-turn: {kind} rows have no turns; it picks conversation rows "
                            "with several assistant replies")
    tokenizer = load_tokenizer(recipe)
    summary: list[str] = []
    data = prepare_data(recipe, tokenizer, log=summary.append)
    if start >= len(data.train) and rows:
        raise PefttoolError(f"--start: {start} is past the last train row ({len(data.train)} rows)")
    previews = []
    picked = pick_rows(data, rows, start, seed, multi_turn)
    if multi_turn and rows and not picked:
        summary.append("--multi-turn: no train row has more than one loss-bearing reply")
    spec = task.row_format(recipe)
    per_token = spec.sequence_labels
    for index in picked:
        row = data.train[index]
        ids = list(row["input_ids"])
        if not per_token:  # one label per row: the text, and the label (or number) it trains toward
            value = row["labels"]
            name = data.label_names[int(value)] if data.label_names else str(value)
            text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            previews.append(RowPreview(text=text, input_ids=ids, tokens=len(ids), loss_tokens=0,
                                       spans=[(text, False)], label=name, index=index))
            continue
        # As training batches it: the row format's collator may make several sequences of one
        # row (a preference pair: the chosen and the rejected reply), each shown.
        batch = data.collate([row])
        sequences = batch["input_ids"].shape[0]
        for k in range(sequences):
            n = int(batch["attention_mask"][k].sum()) if "attention_mask" in batch else batch["input_ids"].shape[1]
            ids, labels = batch["input_ids"][k][:n].tolist(), batch["labels"][k][:n].tolist()
            names = spec.sequence_names
            part = names[k] if k < len(names) else (f"sequence {k + 1}" if sequences > 1 else "")
            spans = loss_spans(tokenizer, ids, labels)
            previews.append(RowPreview(text="".join(t for t, _ in spans), input_ids=ids, tokens=len(ids),
                                       loss_tokens=sum(1 for x in labels if x != IGNORE_INDEX), spans=spans,
                                       index=index, part=part))
    # labelled rows are cut at max_length by the tokenizer, uncounted: only "at max_length"
    lengths = {split: length_stats([len(x) for x in ds["input_ids"]], recipe.data.max_length,
                                   data.stats[split] if per_token else {})
               for split, ds in (("train", data.train), ("eval", data.eval))}
    return DataPreview(recipe=str(recipe.name), task=recipe.task.type,
                       format=getattr(recipe.task, "format", None) if task.formats else None,
                       max_length=recipe.data.max_length, rows=previews, lengths=lengths,
                       cleaning=_plain(data.stats), summary=summary)


def _plain(value: Any) -> Any:
    """The stats as JSON-ready values (Counters become dicts, paths strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def format_text(preview: DataPreview, color: bool = False) -> str:
    """The preview for people. Loss-bearing text is shown in [[double brackets]] (and green on
    a terminal with `color`)."""
    def mark(piece: str, loss: bool) -> str:
        if not loss:
            return piece
        return f"\033[1;32m[[{piece}]]\033[0m" if color else f"[[{piece}]]"

    kind = preview.task + (f" ({preview.format})" if preview.format else "")
    out = [f"recipe {preview.recipe}: {kind}, max_length {preview.max_length} tokens"]
    if any(row.label is None for row in preview.rows):  # rows whose loss is on their tokens
        out.append("text in [[double brackets]] carries loss (the model is trained to produce it)")
    for row in preview.rows:
        head = f"--- train row {row.index + 1}{', ' + row.part if row.part else ''}: {row.tokens} tokens"
        head += f", label {row.label!r} (loss on the label, not on tokens)" if row.label is not None \
            else f", {row.loss_tokens} carry loss"
        out += [head, "".join(mark(t, loss) for t, loss in row.spans), f"ids: {row.input_ids}"]
    out.append("--- lengths in tokens")
    for split, s in preview.lengths.items():
        line = (f"{split:<5} {s.rows} rows: min {s.min}, median {s.median:g}, p95 {s.p95}, max {s.max}; "
                f"{s.at_max_length} at max_length")
        if s.truncated is not None:
            line += f", {s.truncated} truncated"
        if s.dropped_truncated:
            line += f", {s.dropped_truncated} dropped (prompt alone too long)"
        out.append(line)
    out.append("--- cleaning")
    out += preview.summary
    return "\n".join(out)
