"""Row formats: how a task's raw rows are checked, cleaned and encoded.

A task picks the format of its rows (`Task.row_format`); the pipeline (read → clean → split →
encode) calls the format's methods and branches on no task or format name. The four here are
the building blocks the built-in tasks use; a task plugin may use or subclass them (the
regression example's `NumberRows` subclasses `RowFormat` itself):

* `LabelledRows`: a text and a label from a label set (label ids, a classifier head)
* `TextRows`: plain text; the loss is on every token
* `InstructionRows`: a prompt (a column, or `data.prompt_template` over columns) and a
  response; the loss is on the response
* `ChatRows`: a conversation rendered by the chat template; the loss is on the tokens
  `data.train_on` names

A format's `make_row` turns one raw row (column → value) into a `Row`, or None for an empty
one, and raises `BadRow` (counted as bad, or a one-line error naming file, row and column) or
`UnknownLabel` (outside the declared set: dropped and counted, or an error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import DataError, one_line
from . import chat
from .cleaning import (
    _BadRow,
    _cell_text,
    _label,
    _missing_column,
    _response,
    _Row,
    _sorted_labels,
    _template_fields,
    _Unknown,
)
from .collate import Collator
from .common import IGNORE_INDEX

if TYPE_CHECKING:
    import datasets

    from ..recipe import Recipe
    from .encoding import _Encoder
    from .sources import _Source

# The public names of the cleaning building blocks, for task plugins.
Row = _Row
BadRow = _BadRow
UnknownLabel = _Unknown
cell_text = _cell_text


class RowFormat:
    """The rows one task reads. Subclass it, fill in `from_recipe`, `make_row`,
    `encode_columns` and `tokenize`; override the rest where the default does not fit."""

    #: labels are per token (padded with -100 in a batch); False: one label per row
    sequence_labels: ClassVar[bool] = True
    #: held-out prompts to reply to (eval.samples, exact_match): `finish` sets them
    prompts: ClassVar[bool] = False
    #: how messages name what a row trains toward
    target_noun: ClassVar[str] = "label"
    #: the reason rows are dropped at max_length, for the no-rows-left error
    too_long: ClassVar[str] = "every prompt is at least"
    #: rows are conversations of several turns (`inspect --multi-turn` picks those with several replies)
    turns: ClassVar[bool] = False
    #: the names of the sequences the collator makes of one row, when several (`inspect` shows each)
    sequence_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, columns: list[tuple[str, str]], declared: list[str] | None = None,
                 response_map: dict[str, str] | None = None):
        self.columns = columns          # (recipe key, column name) the rows are read from
        self.declared = declared        # the label set rows are checked against (None: any)
        self.response_map = response_map

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> RowFormat:
        raise NotImplementedError

    def prepare(self, recipe: Recipe, tokenizer: Any) -> None:
        """Called once with the tokenizer, before any row is read. Default: nothing."""

    def for_columns(self, recipe: Recipe, src: _Source, columns: list[str]) -> RowFormat:
        """The format for a file with these columns (chat picks its messages column)."""
        return self

    def make_row(self, recipe: Recipe, values: dict[str, Any]) -> _Row | None:
        raise NotImplementedError

    def label_names(self, rows: list[_Row]) -> list[str] | None:
        """The label set, in id order, when rows carry one (None: they do not)."""
        return None

    def unknown_target(self, recipe: Recipe) -> tuple[str, list[str], str]:
        """For an unknown-label error: the column, the values allowed, and the key to fix."""
        d = recipe.data
        return d.response_column, list(d.response_map or {}), "data.response_map"

    def encode_columns(self, rows: list[_Row], encoder: _Encoder) -> dict[str, list]:
        """The cleaned rows as the columns `tokenize` reads."""
        raise NotImplementedError

    def tokenize(self, encoder: _Encoder, batch: dict[str, list]) -> dict[str, list]:
        """A batch of `encode_columns` → input_ids, attention_mask, labels (and any `_`-columns
        `finish` removes)."""
        raise NotImplementedError

    def finish(self, encoder: _Encoder, ds: datasets.Dataset, rows: list[_Row],
               counts: dict[str, Any], split: str) -> datasets.Dataset:
        """The tokenized split, its truncation counts recorded and helper columns removed."""
        return ds

    def collator(self, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """What turns a list of tokenized rows into a batch (a dict of tensors the model, or
        the task's `training_loss`, takes). It must pickle (DataLoader workers): a plain class
        instance, not a closure. Default: `Collator` (right padding; sequence labels padded
        with -100; one label per row as a 1-D tensor, float32 for numbers)."""
        return Collator(pad_id=pad_id, sequence_labels=self.sequence_labels)

    # Inference (`pefttool generate`, the TUI's Try it): a finished run's prompt is rendered
    # the way its training rendered rows of this format.
    #: data.chat_template applies to a single prompt too (plain text: only to conversations)
    single_prompt_template: ClassVar[bool] = True
    #: what follows a single prompt rendered without a template (instruction rows: a newline)
    prompt_suffix: ClassVar[str] = "\n"

    def uses_chat_template(self, recipe: Recipe, conversation: bool) -> bool:
        """Whether a prompt (`conversation`: a list of turns) goes through the chat template
        (when the tokenizer has one)."""
        return bool(getattr(recipe.data, "chat_template", True)) and (
            conversation or self.single_prompt_template)

    def prompt_column_of(self, recipe: Recipe) -> str:
        """The column a JSONL prompt file's rows give their prompt in."""
        return recipe.data.prompt_column

    def typed_prompt(self, recipe: Recipe, text: str) -> str:
        """A prompt a person typed (`generate --prompt`, the TUI's Try it) → the prompt
        training would have built from it. Default: the text as typed."""
        return text

    def typed_prompt_note(self, recipe: Recipe) -> str:
        """What `typed_prompt` does to a typed text, in words ('' when nothing)."""
        return ""

    def file_prompt(self, recipe: Recipe, row: dict[str, Any], where: str) -> str | list[dict[str, str]]:
        """One JSONL row of a prompt file (`generate --file`) → the prompt: the prompt column's
        text, or its list of turns (a trailing assistant turn, the reference reply, left out)."""
        column = self.prompt_column_of(recipe)
        value = row.get(column)
        if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
            while value and value[-1].get("role") == "assistant":
                value = value[:-1]   # the reference answer: the model is to write it
            if value:
                return [{"role": str(m.get("role", "user")), "content": str(m["content"])}
                        for m in value]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where} has no '{column}' text (the run's prompt column); give "
                            f"JSONL with a '{column}' field, or one prompt per line")
        return value


class LabelledRows(RowFormat):
    """A text and a label per row; the label set is task.labels, else the train file's."""

    sequence_labels = False

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> RowFormat:
        d = recipe.data
        return cls([("data.text_column", d.text_column), ("data.label_column", d.label_column)],
                   recipe.task.labels)

    def make_row(self, recipe: Recipe, values: dict[str, Any]) -> _Row | None:
        d = recipe.data
        text = _cell_text(values[d.text_column], d.text_column)
        label = _label(values[d.label_column], self.declared, d.label_column)
        return _Row(text, text, label) if text else None

    def label_names(self, rows: list[_Row]) -> list[str] | None:
        if self.declared is not None:
            return list(self.declared)
        return _sorted_labels({r.label_text() for r in rows})

    def unknown_target(self, recipe: Recipe) -> tuple[str, list[str], str]:
        return recipe.data.label_column, recipe.task.labels or [], "task.labels"

    def encode_columns(self, rows: list[_Row], encoder: _Encoder) -> dict[str, list]:
        return {"text": [r.text for r in rows],
                "label": [encoder.label_ids[r.label_text()] for r in rows]}

    def tokenize(self, encoder: _Encoder, batch: dict[str, list]) -> dict[str, list]:
        enc = encoder.tok(batch["text"], truncation=True, max_length=encoder.max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": batch["label"]}


class TextRows(RowFormat):
    """Plain text: BOS (where the tokenizer adds one) + text + EOS, labels = input_ids."""

    single_prompt_template = False   # a prompt is text to continue, as is
    prompt_suffix = ""

    def prompt_column_of(self, recipe: Recipe) -> str:
        return recipe.data.text_column

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> RowFormat:
        return cls([("data.text_column", recipe.data.text_column)])

    def make_row(self, recipe: Recipe, values: dict[str, Any]) -> _Row | None:
        col = recipe.data.text_column
        text = _cell_text(values[col], col)
        return _Row(text, text) if text else None

    def encode_columns(self, rows: list[_Row], encoder: _Encoder) -> dict[str, list]:
        return {"text": [r.text for r in rows]}

    def tokenize(self, encoder: _Encoder, batch: dict[str, list]) -> dict[str, list]:
        ids_list, truncated = [], []
        for ids in encoder.tok(batch["text"], add_special_tokens=False)["input_ids"]:
            ids = encoder.bos + ids + encoder.eos
            truncated.append(len(ids) > encoder.max_length)
            ids_list.append(ids[: encoder.max_length])
        return {"input_ids": ids_list, "attention_mask": [[1] * len(x) for x in ids_list],
                "labels": [list(x) for x in ids_list], "_truncated": truncated}

    def finish(self, encoder: _Encoder, ds: datasets.Dataset, rows: list[_Row],
               counts: dict[str, Any], split: str) -> datasets.Dataset:
        counts["truncated"] = sum(list(ds["_truncated"]))
        return ds.remove_columns(["_truncated"])


class _PromptedRows(RowFormat):
    """Rows with a prompt and a reply: the loss on the reply; rows whose reply has no room
    left within max_length are dropped (`_drop`) and counted; the held-out prompts are kept."""

    prompts = True
    target_noun = "response"
    prompt_column: ClassVar[str]   # the helper column `tokenize` writes for `held_out`

    def finish(self, encoder: _Encoder, ds: datasets.Dataset, rows: list[_Row],
               counts: dict[str, Any], split: str) -> datasets.Dataset:
        counts["truncated"] = sum(list(ds["_truncated"]))
        drop = list(ds["_drop"])
        counts["dropped_truncated"] = sum(drop)
        if split == "eval":
            kept = [i for i, dropped in enumerate(drop) if not dropped]
            encoder.eval_answers = [rows[i].label_text() for i in kept]
            encoder.eval_prompts, encoder.eval_prompt_ids = self.held_out(encoder, ds, rows, kept)
        if counts["dropped_truncated"]:
            ds = ds.filter(lambda batch: [not x for x in batch["_drop"]], batched=True,
                           new_fingerprint=f"pefttool-{encoder.fingerprint}-{split}-kept")
        return ds.remove_columns(["_drop", self.prompt_column, "_truncated"])

    def held_out(self, encoder: _Encoder, ds: datasets.Dataset, rows: list[_Row],
                 kept: list[int]) -> tuple[list[str], list[list[int]]]:
        """The kept eval rows' prompts as the model should see them, and their token ids."""
        raise NotImplementedError


class InstructionRows(_PromptedRows):
    """A prompt (a column, or data.prompt_template over columns) and a response."""

    prompt_column = "_prompt_len"

    def __init__(self, columns: list[tuple[str, str]], declared: list[str] | None = None,
                 response_map: dict[str, str] | None = None, template: str | None = None,
                 template_fields: list[str] | None = None):
        super().__init__(columns, declared, response_map)
        self.template = template
        self.template_fields = template_fields or []

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> RowFormat:
        d = recipe.data
        declared = list(d.response_map) if d.response_map else recipe.task.labels
        if d.prompt_template is None:
            cols = [("data.prompt_column", d.prompt_column), ("data.response_column", d.response_column)]
            return cls(cols, declared, d.response_map)
        fields_ = _template_fields(d.prompt_template)
        cols = [("data.prompt_template", f) for f in fields_] + [("data.response_column", d.response_column)]
        return cls(cols, declared, d.response_map, d.prompt_template, fields_)

    def make_row(self, recipe: Recipe, values: dict[str, Any]) -> _Row | None:
        d = recipe.data
        if self.template is None:
            prompt = _cell_text(values[d.prompt_column], d.prompt_column)
        else:
            parts = {f: _cell_text(values[f], f) for f in self.template_fields}
            try:
                prompt = self.template.format(**parts).strip()
            except (KeyError, IndexError, AttributeError, ValueError) as exc:
                raise DataError(f"data.prompt_template: cannot be filled from the row's columns "
                                f"({type(exc).__name__}: {one_line(exc)}); use plain {{column}} "
                                "fields") from None
            if not all(parts.values()):
                prompt = ""
        response = _response(values[d.response_column], self, d.response_column)
        return _Row(prompt, prompt, response) if prompt and response else None

    def encode_columns(self, rows: list[_Row], encoder: _Encoder) -> dict[str, list]:
        return {"prompt": [r.text for r in rows], "response": [r.label for r in rows]}

    def tokenize(self, encoder: _Encoder, batch: dict[str, list]) -> dict[str, list]:
        rendered = [encoder.render(p) for p in batch["prompt"]]
        prompts = encoder.tok(rendered, add_special_tokens=False)["input_ids"]
        responses = encoder.tok(batch["response"], add_special_tokens=False)["input_ids"]
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [],
                                "_drop": [], "_truncated": [], "_prompt_len": []}
        limit = encoder.max_length
        for p, r in zip(prompts, responses):
            p = encoder.bos + p
            r = r + encoder.eos
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

    def typed_prompt(self, recipe: Recipe, text: str) -> str:
        """A template over one column is filled with the typed text, as training filled it
        with that column (a template over several columns cannot be: the text as typed)."""
        if self.template is None or len(self.template_fields) != 1:
            return text
        return self.template.format(**{self.template_fields[0]: text.strip()}).strip()

    def typed_prompt_note(self, recipe: Recipe) -> str:
        if self.template is None or len(self.template_fields) != 1:
            return ""
        return f"your text fills {{{self.template_fields[0]}}} of the run's data.prompt_template"

    def file_prompt(self, recipe: Recipe, row: dict[str, Any], where: str) -> str | list[dict[str, str]]:
        if self.template is None or isinstance(row.get(recipe.data.prompt_column), list):
            return super().file_prompt(recipe, row, where)
        try:
            return self.template.format(**row)
        except (KeyError, IndexError, ValueError):
            raise DataError(f"{where} lacks a column that data.prompt_template "
                            f"({self.template!r}) names") from None

    def held_out(self, encoder: _Encoder, ds: datasets.Dataset, rows: list[_Row],
                 kept: list[int]) -> tuple[list[str], list[list[int]]]:
        prompt_lens = list(ds["_prompt_len"])
        all_ids = list(ds["input_ids"])
        # With the BOS written out, tokenizing a prompt with add_special_tokens=False gives
        # exactly the ids training saw (`eval_prompt_ids`).
        bos_text = encoder.tok.bos_token if encoder.bos else ""
        return ([bos_text + encoder.render(rows[i].text) for i in kept],
                [list(all_ids[i][: prompt_lens[i]]) for i in kept])


class ChatRows(_PromptedRows):
    """A conversation (messages / ShareGPT), rendered by the tokenizer's chat template."""

    prompt_column = "_prompt_ids"
    too_long = "every conversation's assistant tokens lie past"
    turns = True

    def __init__(self, columns: list[tuple[str, str]], renderer: chat.Renderer | None = None):
        super().__init__(columns)
        self.renderer = renderer

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> RowFormat:
        # The column is settled per file (`for_columns`): messages, else conversations.
        return cls([("data.messages_column", recipe.data.messages_column or "messages")])

    def uses_chat_template(self, recipe: Recipe, conversation: bool) -> bool:
        return True   # a chat run's every prompt is a conversation the template renders

    def file_prompt(self, recipe: Recipe, row: dict[str, Any], where: str) -> str | list[dict[str, str]]:
        """A JSONL row → the conversation to continue, read as training read them (messages
        / ShareGPT), its last assistant turns (the reference replies) left out."""
        d = recipe.data
        column = chat.pick_column(getattr(d, "messages_column", None), list(row))
        if column is None:
            names = d.messages_column or " or ".join(chat.MESSAGES_COLUMNS)
            raise DataError(f"{where} has no {names} list (the run is a chat run); give JSONL rows "
                            f"like {{\"messages\": [{{\"role\": \"user\", \"content\": \"…\"}}]}}, "
                            f"or one prompt per line")
        try:
            messages = chat.normalize(row[column], need_reply=False)
        except chat.ChatProblem as exc:
            raise DataError(f"{where}: '{column}' {exc}") from None
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages or messages[-1]["role"] == "system":
            raise DataError(f"{where}: '{column}' has no user turn to answer")
        return messages

    def prepare(self, recipe: Recipe, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"model.path: the tokenizer of '{recipe.model.path}' has no chat "
                            "template, and task.format = \"chat\" renders conversations with "
                            "it; use a chat model's tokenizer (one with a chat_template)")
        self.renderer = chat.Renderer(tokenizer, recipe.data.system_prompt)

    def for_columns(self, recipe: Recipe, src: _Source, columns: list[str]) -> RowFormat:
        configured = recipe.data.messages_column
        col = chat.pick_column(configured, columns)
        if col is None:
            if configured is not None:
                raise DataError(_missing_column(src, "data.messages_column", configured, columns))
            where = "in the file's schema" if src.fmt == "parquet" else "in any row"
            raise DataError(f"{src.name}: no 'messages' or 'conversations' column {where} for "
                            f"task.format = \"chat\"; the columns are: {', '.join(columns) or '(none)'}"
                            f"; set data.messages_column to the one holding the conversations")
        return ChatRows([("data.messages_column", col)], renderer=self.renderer)

    def make_row(self, recipe: Recipe, values: dict[str, Any]) -> _Row | None:
        column = self.columns[0][1]
        assert self.renderer is not None, "prepare() sets the chat renderer"
        try:
            messages = chat.normalize(values[column])
            conversation = self.renderer.render(messages)
        except chat.ChatProblem as exc:
            raise _BadRow(str(exc), column) from None
        return _Row(chat.key(messages), conversation.text, conversation.answer, conversation)

    def encode_columns(self, rows: list[_Row], encoder: _Encoder) -> dict[str, list]:
        return {"text": [r.text for r in rows],
                "spans": [[list(s) for s in r.chat_conversation().spans] for r in rows],
                "prompt": [r.chat_conversation().prompt for r in rows]}

    def tokenize(self, encoder: _Encoder, batch: dict[str, list]) -> dict[str, list]:
        """Rendered conversations → ids, with labels on the tokens `data.train_on` names.

        A token is an assistant token when its characters overlap an assistant span (so a
        token that merges the template's text with the reply's first characters counts). Rows
        whose learnable tokens all fall past `max_length` are dropped (`_drop`), not kept with
        nothing to learn.
        """
        tok, texts = encoder.tok, batch["text"]
        pieces: Iterable[tuple[Any, Any]]   # (ids, character offsets) per text
        if getattr(tok, "is_fast", False):
            enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
            pieces = zip(enc["input_ids"], enc["offset_mapping"])
        else:  # no offsets: tokenize the pieces between span boundaries one by one
            pieces = (_piecewise(tok, t, s) for t, s in zip(texts, batch["spans"]))
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [],
                                "_drop": [], "_truncated": [], "_prompt_ids": []}
        limit, train_on = encoder.max_length, encoder.recipe.data.train_on
        for (ids, offsets), spans in zip(pieces, batch["spans"]):
            ids = list(ids)
            marks = [any(e > s0 and s < e0 or s == e and s0 <= s < e0 for s0, e0 in spans)
                     for s, e in offsets]
            last = spans[-1]
            in_last = [any((e > last[0] and s < last[1], s == e and last[0] <= s < last[1]))
                       for s, e in offsets]
            prompt_len = in_last.index(True) if True in in_last else len(ids)
            learn = {"all": [True] * len(ids), "last_assistant": in_last}.get(train_on, marks)
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

    def held_out(self, encoder: _Encoder, ds: datasets.Dataset, rows: list[_Row],
                 kept: list[int]) -> tuple[list[str], list[list[int]]]:
        # The conversation up to its last reply, as the template writes it (with the
        # generation prompt), and its ids as the whole row was tokenized.
        prompt_ids = list(ds["_prompt_ids"])
        return ([rows[i].chat_conversation().prompt for i in kept],
                [list(prompt_ids[i]) for i in kept])


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


__all__ = ["BadRow", "ChatRows", "InstructionRows", "LabelledRows", "Row", "RowFormat", "TextRows",
           "UnknownLabel", "cell_text"]
