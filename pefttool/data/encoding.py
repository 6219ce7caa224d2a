"""Rendering (prompt template / chat template) and tokenizing rows into `datasets.Dataset`s."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import DataError, one_line
from .chat import with_system
from .cleaning import _Row, _Spec
from .common import IGNORE_INDEX

if TYPE_CHECKING:
    import datasets

    from ..recipe import Recipe


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
        import datasets

        if self.kind == "labelled":
            data = {"text": [r.text for r in rows], "label": [self.label_ids[r.label_text()] for r in rows]}
            fn = self._classification
        elif self.kind == "text":
            data = {"text": [r.text for r in rows]}
            fn = self._plain
        elif self.kind == "chat":
            data = {"text": [r.text for r in rows],
                    "spans": [[list(s) for s in r.chat_conversation().spans] for r in rows],
                    "prompt": [r.chat_conversation().prompt for r in rows]}
            fn = self._chat
        else:
            data = {"prompt": [r.text for r in rows], "response": [r.label for r in rows]}
            fn = self._instruction
        ds = datasets.Dataset.from_dict(data)
        ds = ds.map(fn, batched=True, batch_size=1000, remove_columns=list(data),
                    new_fingerprint=f"pefttool-{self.fingerprint}-{split}")
        if self.kind == "labelled":
            return ds
        counts["truncated"] = sum(list(ds["_truncated"]))
        if self.kind in ("instruction", "chat"):
            drop = list(ds["_drop"])
            counts["dropped_truncated"] = sum(drop)
            if split == "eval":
                kept = [i for i, dropped in enumerate(drop) if not dropped]
                self.eval_answers = [rows[i].label_text() for i in kept]
                if self.kind == "chat":
                    # The conversation up to its last reply, as the template writes it (with
                    # the generation prompt), and its ids as the whole row was tokenized.
                    self.eval_prompts = [rows[i].chat_conversation().prompt for i in kept]
                    prompt_ids = list(ds["_prompt_ids"])
                    self.eval_prompt_ids = [list(prompt_ids[i]) for i in kept]
                else:
                    prompt_lens = list(ds["_prompt_len"])
                    all_ids = list(ds["input_ids"])
                    # With the BOS written out, tokenizing a prompt with add_special_tokens=False
                    # gives exactly the ids training saw (`eval_prompt_ids`).
                    bos_text = self.tok.bos_token if self.bos else ""
                    self.eval_prompts = [bos_text + self.render(rows[i].text) for i in kept]
                    self.eval_prompt_ids = [list(all_ids[i][: prompt_lens[i]]) for i in kept]
            if counts["dropped_truncated"]:
                ds = ds.filter(lambda batch: [not x for x in batch["_drop"]], batched=True,
                               new_fingerprint=f"pefttool-{self.fingerprint}-{split}-kept")
            ds = ds.remove_columns(["_drop", "_prompt_ids" if self.kind == "chat" else "_prompt_len"])
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

    def _chat(self, batch: dict[str, list]) -> dict[str, list]:
        """Rendered conversations → ids, with labels on the tokens `data.train_on` names.

        A token is an assistant token when its characters overlap an assistant span (so a
        token that merges the template's text with the reply's first characters counts). Rows
        whose learnable tokens all fall past `max_length` are dropped (`_drop`), not kept with
        nothing to learn.
        """
        texts = batch["text"]
        pieces: Iterable[tuple[Any, Any]]   # (ids, character offsets) per text
        if getattr(self.tok, "is_fast", False):
            enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True)
            pieces = zip(enc["input_ids"], enc["offset_mapping"])
        else:  # no offsets: tokenize the pieces between span boundaries one by one
            pieces = (_piecewise(self.tok, t, s) for t, s in zip(texts, batch["spans"]))
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [],
                                "_drop": [], "_truncated": [], "_prompt_ids": []}
        limit = self.max_length
        for (ids, offsets), spans in zip(pieces, batch["spans"]):
            ids = list(ids)
            marks = [any(e > s0 and s < e0 or s == e and s0 <= s < e0 for s0, e0 in spans)
                     for s, e in offsets]
            last = spans[-1]
            in_last = [any((e > last[0] and s < last[1], s == e and last[0] <= s < last[1]))
                       for s, e in offsets]
            prompt_len = in_last.index(True) if True in in_last else len(ids)
            if self.train_on == "all":
                learn = [True] * len(ids)
            elif self.train_on == "last_assistant":
                learn = in_last
            else:
                learn = marks
            labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, learn)]
            cut_ids, cut_labels = ids[:limit], labels[:limit]
            # The first position predicts nothing (labels are shifted inside the model).
            drop = not any(x != IGNORE_INDEX for x in cut_labels[1:])
            out["input_ids"].append([] if drop else cut_ids)
            out["attention_mask"].append([] if drop else [1] * len(cut_ids))
            out["labels"].append([] if drop else cut_labels)
            out["_drop"].append(drop)
            out["_truncated"].append(not drop and len(ids) > limit)
            out["_prompt_ids"].append(ids[:prompt_len])
        return out


def _piecewise(tok: Any, text: str, spans: list[list[int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, offsets) for a tokenizer without offsets: each piece between span boundaries is
    tokenized alone; every token of a piece gets the piece's character range."""
    cuts = sorted({0, len(text), *(p for s in spans for p in s)})
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for a, b in zip(cuts, cuts[1:]):
        piece = tok(text[a:b], add_special_tokens=False)["input_ids"]
        ids += piece
        offsets += [(a, b)] * len(piece)
    return ids, offsets
