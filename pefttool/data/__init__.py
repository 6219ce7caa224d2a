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
   with the loss masked (-100) on prompt tokens; plain text → labels = input_ids; chat
   (`chat.py`) → each conversation rendered by the chat template, the loss on the tokens
   ``data.train_on`` names (assistant turns, the last one, or all), rows left with nothing to
   learn after ``max_length`` dropped and counted.

Every count lands in `PreparedData.stats` and one log line per split.
"""

from ..sampling import EpochShuffleSampler, LengthGroupedSampler  # batch order
from .collate import Collator
from .common import IGNORE_INDEX
from .pipeline import PreparedData, prepare_data

__all__ = ["IGNORE_INDEX", "Collator", "EpochShuffleSampler", "LengthGroupedSampler", "PreparedData",
           "prepare_data"]
