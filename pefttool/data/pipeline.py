"""`prepare_data`: read → clean → split → encode, for the train and eval files."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from ..tasks import get_task
from .cleaning import _empty_message, _new_counts, _read_file, _summary
from .encoding import _Encoder
from .mixing import weigh
from .reading import _quiet_datasets
from .sources import _source

if TYPE_CHECKING:
    import datasets

    from ..recipe import Recipe


@dataclass
class PreparedData:
    """What the engine trains and evaluates on.

    `train`/`eval` hold input_ids, attention_mask and labels (an int per row for
    classification, a list with -100 on prompt tokens for causal-lm). For causal-lm
    instruction and chat data, `eval_prompts[i]` is the prompt exactly as rendered for training
    (chat template applied; chat: the conversation before its last reply, with the generation
    prompt), `eval_prompt_ids[i]` its token ids (feed these to `generate`; they
    include any BOS), and `eval_answers[i]` the reference response (chat: the last reply).
    """

    train: datasets.Dataset
    eval: datasets.Dataset
    label_names: list[str] | None
    stats: dict[str, dict[str, Any]]
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]   # the row format's collator
    pad_id: int = 0                   # the tokenizer's padding id (packing's collator pads with it)
    eval_prompts: list[str] | None = None
    eval_answers: list[str] | None = None
    eval_prompt_ids: list[list[int]] | None = None


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
    spec = get_task(recipe).row_format(recipe)  # the task says which rows it reads
    spec.prepare(recipe, tokenizer)
    cache_root = Path(cache_dir) if cache_dir is not None else None

    mixed = not isinstance(d.train, str)   # several sources, with weights (data/mixing.py)
    origin: list[int] = []
    with _quiet_datasets():
        if mixed:
            from .mixing import read_sources

            train_rows, origin, train_counts, train_keys = read_sources(
                recipe, tokenizer, get_task(recipe).row_format, cache_root, log)
            train_src = _source(recipe.for_source(d.sources[0]), "data.train", d.sources[0].path)
        else:
            train_src = _source(recipe, "data.train", d.sources[0].path)
            train_rows, train_counts, train_keys = _read_file(train_src, spec, recipe, cache_root, log)

        label_names = spec.label_names(train_rows)
        if label_names is not None and len(label_names) < 2:
            raise DataError(
                f"{train_src.name}: column '{d.label_column}' has only one label value "
                f"({label_names[0]!r}) after cleaning; a task with a label set needs at least 2 "
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
            if mixed:
                train_rows = weigh(recipe, train_rows, origin, train_counts, log)
            else:
                rng.shuffle(train_rows)
            random.Random(d.seed + 1).shuffle(eval_rows)
        else:
            if len(train_rows) < 2:
                raise DataError(
                    f"{train_counts['file'] if mixed else train_src.name}: only {len(train_rows)} "
                    f"usable row(s) after cleaning; need at least 2 to hold out an eval split "
                    f"(add rows or set data.eval)")
            order = list(range(len(train_rows)))
            rng.shuffle(order)
            train_rows = [train_rows[i] for i in order]
            origin = [origin[i] for i in order] if mixed else origin
            n_eval = min(max(1, round(len(train_rows) * d.eval_fraction)), len(train_rows) - 1)
            eval_rows, train_rows = train_rows[:n_eval], train_rows[n_eval:]
            if mixed:   # held out before weighting: no repeated row is in both splits
                train_rows = weigh(recipe, train_rows, origin[n_eval:], train_counts, log)
            train_counts["held_out"] = n_eval
            eval_counts = _new_counts(train_src, source=f"held out {d.eval_fraction:.0%} of train, "
                                      f"seed {d.seed}")
            eval_counts["rows_read"] = n_eval
            if mixed:
                eval_counts["file"] = train_counts["file"]

        for rows, counts, cap in ((train_rows, train_counts, d.max_train_rows),
                                  (eval_rows, eval_counts, d.max_eval_rows)):
            if cap is not None and len(rows) > cap:
                counts["capped"] += len(rows) - cap
                del rows[cap:]

        encoder = _Encoder(tokenizer, recipe, label_names, spec)
        train_ds = encoder.encode(train_rows, train_counts, "train")
        eval_ds = encoder.encode(eval_rows, eval_counts, "eval")
        for split, ds, counts in (("train", train_ds, train_counts), ("eval", eval_ds, eval_counts)):
            if len(ds) == 0:
                raise DataError(
                    f"{counts['file']}: no {split} rows left: {spec.too_long} "
                    f"data.max_length = {d.max_length} tokens, so no response token fits "
                    f"({counts['dropped_truncated']} row(s) dropped); raise data.max_length")

    prompts = answers = prompt_ids = None
    if spec.prompts:
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
        collate=spec.collator(encoder.pad_id),
        pad_id=encoder.pad_id,
        eval_prompts=prompts,
        eval_answers=answers,
        eval_prompt_ids=prompt_ids,
    )
