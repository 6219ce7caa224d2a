"""After training: predict with a run, export it (adapter as is, or merged into its base so
plain transformers loads it), for every built-in strategy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fault_helpers import child_env
from pefttool.engine import run_recipe
from pefttool.recipe import load_recipe
from pefttool.trained import export, load_trained, predict
from test_faults import assert_clean_failure, cli
from tiny_models import write_tiny_recipe

TEXTS = ["a lovely, moving film", "dull and far too long", "fine"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_classifier_dir):
    """A short finished run of each built-in strategy."""
    out = {}
    for strategy in ("lora", "full", "qlora"):
        folder = tmp_path_factory.mktemp(strategy)
        recipe = load_recipe(write_tiny_recipe(folder, tiny_classifier_dir, strategy, overrides={
            "train.max_steps": 3, "eval.before_training": False, "train.lr": 0.02}))
        out[strategy] = run_recipe(recipe).run_dir
    return out


def logits(model, tokenizer, texts=TEXTS):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.float()


@pytest.fixture(scope="module")
def merged(runs, tmp_path_factory):
    """Each run exported merged, and what one child without PEFT importable made of each export
    (one interpreter start for the three): strategy → (export folder, the child's line)."""
    outs = {strategy: export(run_dir, tmp_path_factory.mktemp(f"merged-{strategy}") / "merged", merge=True)
            for strategy, run_dir in runs.items()}
    probe = ("import sys; sys.modules['peft'] = None\n"
             "from transformers import AutoModelForSequenceClassification as A\n"
             "for strategy, out in zip(sys.argv[1::2], sys.argv[2::2]):\n"
             "    try:\n"
             "        A.from_pretrained(out); print(strategy, 'ok', flush=True)\n"
             "    except Exception as e:\n"
             "        print(strategy, repr(e).replace(chr(10), ' '), flush=True)\n")
    args = [str(a) for strategy, out in outs.items() for a in (strategy, out)]
    done = subprocess.run([sys.executable, "-c", probe, *args], env=child_env(), capture_output=True,
                          text=True, timeout=180)
    said = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    return {strategy: (out, said.get(strategy, done.stderr[-2000:])) for strategy, out in outs.items()}


@pytest.mark.parametrize("strategy", ["lora", "full", "qlora"])
def test_a_merged_export_loads_in_plain_transformers_and_agrees(strategy, runs, merged):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = runs[strategy]
    trained = load_trained(run_dir, dequantize=True)
    expected = logits(trained.model, trained.tokenizer)
    out, probed = merged[strategy]
    assert not (out / "adapter_config.json").exists()
    merged_model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert (logits(merged_model, AutoTokenizer.from_pretrained(out)) - expected).abs().max() < 1e-4
    assert json.loads((out / "labels.json").read_text())["id2label"]["0"] == "negative"
    assert probed == "ok"  # ...and with PEFT not importable at all


def test_an_unmerged_export_is_the_adapter_and_never_overwrites(capsys, runs, tmp_path):
    out = export(runs["lora"], tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    rc, o, err = cli(capsys, "export", runs["lora"], "--out", out)
    assert_clean_failure(rc, o, err, "exists and is not empty", "export never overwrites")


def test_an_export_removes_what_killed_exports_left(runs, tmp_path):
    """Issue 30, item 17: a killed export leaves a hidden .OUT.tmp-PID folder; the next export
    to that --out removes those whose process is gone, and leaves a live one alone."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale, live = tmp_path / f".adapter.tmp-{gone}", tmp_path / f".adapter.tmp-{os.getppid()}"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"half")
    export(runs["lora"], tmp_path / "adapter")
    assert not stale.exists() and live.exists()


def test_predict_labels_texts_with_probabilities(capsys, runs):
    trained = load_trained(runs["lora"])
    results = predict(trained, TEXTS)
    assert [label for label, _ in results] == [
        trained.labels[int(i)] for i in logits(trained.model, trained.tokenizer).argmax(-1)]
    for _, probs in results:
        assert set(probs) == {"negative", "positive"} and abs(sum(probs.values()) - 1) < 1e-4
    rc, out, err = cli(capsys, "predict", "--json", runs["lora"], *TEXTS)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == TEXTS and [r["label"] for r in rows] == [l for l, _ in results]


def test_predict_reads_a_file_as_training_reads_data(capsys, runs, tmp_path):
    """Issue 30, item 14: a CSV with a byte-order mark is read (it had "no 'text' text"), a
    header naming a column twice is refused, and 70 texts come out in order, in chunks."""
    texts = [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(70)]
    bom = tmp_path / "bom.csv"
    bom.write_text("text\n" + "\n".join(f'"{t}"' for t in texts) + "\n", encoding="utf-8-sig")
    rc, out, err = cli(capsys, "predict", "--json", runs["lora"], "--file", bom)
    assert rc == 0, err
    assert [json.loads(line)["text"] for line in out.splitlines()] == texts
    twice = tmp_path / "twice.csv"
    twice.write_text("text,text\na,b\n")
    rc, out, err = cli(capsys, "predict", runs["lora"], "--file", twice)
    assert_clean_failure(rc, out, err, "names the column 'text' twice", "rename one")


def test_bad_inputs_to_predict_and_export_are_one_line(capsys, runs, tmp_path, tiny_classifier_dir):
    rc, out, err = cli(capsys, "predict", tmp_path, "x")
    assert_clean_failure(rc, out, err, "is not a pefttool run")
    recipe = write_tiny_recipe(tmp_path / "r", tiny_classifier_dir, "lora", overrides={
        "data.text_column": "nope"})
    cli(capsys, "run", recipe)  # fails at set-up: a run folder with no model/
    rc, out, err = cli(capsys, "export", tmp_path / "r" / "runs" / "recipe", "--out", tmp_path / "o")
    assert_clean_failure(rc, out, err, "has no model/ yet")
    rc, out, err = cli(capsys, "export", runs["lora"], "--out", tmp_path / "g", "--gguf")
    assert_clean_failure(rc, out, err, "--gguf: converting to GGUF needs llama.cpp's")
    assert not (tmp_path / "g").exists()


def test_export_into_a_run_folder_is_refused_before_anything_loads(capsys, runs, tmp_path, monkeypatch):
    import pefttool.trained as trained_module

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(trained_module, "load_trained", no_loading)
    run = runs["lora"]
    for out in (run / "model" / "exp", run / "exp", run / "checkpoints" / "a" / "b", run):
        rc, o, err = cli(capsys, "export", run, "--out", out, "--merge")
        assert_clean_failure(rc, o, err, f"--out: {out} is inside the run folder {run}",
                             "choose a folder outside every run folder")
        assert not (run / "model" / "exp").exists() and not (run / "exp").exists()
    # another run's folder too, through a link to it
    (tmp_path / "link").symlink_to(runs["full"])
    rc, o, err = cli(capsys, "export", run, "--out", tmp_path / "link" / "model" / "x")
    assert_clean_failure(rc, o, err, f"inside the run folder {runs['full']}")


def test_an_export_copies_only_the_files_the_manifest_lists(runs, tmp_path):
    model = runs["lora"] / "model"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for export")
    (model / "notes.txt").symlink_to(secret)
    (model / "extra.txt").write_text("a user's file")
    try:
        out = export(runs["lora"], tmp_path / "adapter")
        listed = set(json.loads((model / ".pefttool-files.json").read_text()))
        assert {str(p.relative_to(out)) for p in out.rglob("*")} == listed
        assert not any(p.is_symlink() for p in out.rglob("*"))
    finally:
        (model / "notes.txt").unlink()
        (model / "extra.txt").unlink()


def test_an_adapter_names_its_base_as_the_recipe_does_not_as_a_local_path(runs):
    from pefttool.recipe import load_recipe as load

    config = json.loads((runs["lora"] / "model" / "adapter_config.json").read_text())
    saved = load(runs["lora"] / "recipe.toml", check_files=False)
    assert config["base_model_name_or_path"] == saved.model.path


def test_predict_cuts_a_huge_text_before_tokenizing_it(runs):
    """Issue 30, item 5: one 50 MB text took 267 s and 7.3 GB to label, though only its first
    data.max_length tokens count. The tokenizer now sees a bounded prefix, and the label and
    probabilities are those of the whole text's first max_length tokens."""
    trained = load_trained(runs["lora"])
    head = TEXTS[0] + " "
    huge = head * (5_000_000 // len(head))  # ~5 MB
    tokenizer, seen = trained.tokenizer, []

    def recording(texts, **kwargs):
        seen.extend(len(t) for t in texts)
        return tokenizer(texts, **kwargs)

    whole = tokenizer([huge], truncation=True, max_length=trained.recipe.data.max_length, return_tensors="pt")
    with torch.no_grad():  # the whole text, cut by the tokenizer only (as before)
        reference = trained.model(**whole).logits.float().softmax(-1)[0]
    trained.tokenizer = recording
    try:
        (label, probs), = predict(trained, [huge])
    finally:
        trained.tokenizer = tokenizer
    assert max(seen) <= trained.recipe.data.max_length * 64 < len(huge)
    assert [probs[name] for name in trained.labels] == pytest.approx(reference.tolist(), abs=1e-5)


def test_a_full_disk_during_export_or_plot_is_one_line(runs, tmp_path):
    """Issue 30, item 8: `export --out` (plain and --merge) and `plot --out` when the disk is
    full or a file-size limit hits (EFBIG here, as ENOSPC would): one line, exit 2, no
    half-written export or hidden temporary left ('internal error: OSError/SafetensorError')."""
    from fault_helpers import run_pefttool
    from test_faults import file_size_limit

    for extra in ([], ["--merge"]):
        out = tmp_path / f"export{len(extra)}"
        result = run_pefttool("export", runs["lora"], "--out", out, *extra, cwd=tmp_path,
                              preexec_fn=file_size_limit(1000))
        assert_clean_failure(result.returncode, result.stdout, result.stderr,
                             f"--out: cannot write the export to {out} (File too large)")
    result = run_pefttool("plot", runs["lora"], "--out", tmp_path / "p.png", cwd=tmp_path,
                          preexec_fn=file_size_limit(1000))
    assert_clean_failure(result.returncode, result.stdout, result.stderr, "cannot write", "p.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
