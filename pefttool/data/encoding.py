"""Tokenizing rows into `datasets.Dataset`s: what every row format shares (the tokenizer's
BOS/EOS/pad, max_length, the chat-template rendering of a prompt); each format's own
tokenizing is in `formats.py`."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from ..errors import DataError, one_line
from .chat import with_system
from .cleaning import _Row

if TYPE_CHECKING:
    import datasets

    from ..recipe import Recipe
    from .formats import RowFormat


# ---------------------------------------------------------------------------- tokenize


class _Encoder:
    """Rows → tokenized `datasets.Dataset`s, the same way for train and eval."""

    def __init__(self, tokenizer: Any, recipe: Recipe, label_names: list[str] | None,
                 row_format: RowFormat):
        self.tok = tokenizer
        self.recipe = recipe
        self.format = row_format
        self.max_length = recipe.data.max_length
        self.label_ids = {n: i for i, n in enumerate(label_names or [])}
        pad = getattr(tokenizer, "pad_token_id", None)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = pad if pad is not None else (eos if eos is not None else 0)
        self.eos = [eos] if eos is not None else []
        self.use_chat = bool(recipe.data.chat_template and getattr(tokenizer, "chat_template", None))
        self.train_on = recipe.data.train_on
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
            + str(getattr(tokenizer, "name_or_path", "")).encode()
            + str(getattr(tokenizer, "chat_template", "")).encode()).hexdigest()[:16]

    def render(self, prompt: str) -> str:
        if self.use_chat:
            try:
                messages = with_system([{"role": "user", "content": prompt}], self.recipe.data.system_prompt)
                out = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:
                raise DataError(f"the tokenizer's chat template failed ({type(exc).__name__}: "
                                f"{one_line(exc)}); set data.chat_template = false") from None
            return out if isinstance(out, str) else str(out)
        return prompt + "\n"

    def encode(self, rows: list[_Row], counts: dict[str, Any], split: str) -> datasets.Dataset:
        """Rows → a tokenized split, as the task's row format says."""
        import datasets

        data = self.format.encode_columns(rows, self)
        ds = datasets.Dataset.from_dict(data)
        ds = ds.map(self._tokenize, batched=True, batch_size=1000, remove_columns=list(data),
                    new_fingerprint=f"pefttool-{self.fingerprint}-{split}")
        return self.format.finish(self, ds, rows, counts, split)

    def _tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        return self.format.tokenize(self, batch)
