"""`pefttool plan`: the estimate's parts against hand arithmetic and against the real model
(parameter counts exact, LoRA trainable counts equal PEFT's on a really wrapped model, the
meta-device activation count equal to what autograd saves on a real CPU forward), the CLI's
text and JSON, and bad input as one line with exit 2."""

from __future__ import annotations

import json
import math

import pytest

from pefttool import plan as P
from pefttool.recipe import load_recipe

MiB = 2**20
BASELINE = 300 * MiB  # the tests pass their own runtime baseline (no subprocess)


@pytest.fixture(autouse=True)
def _fixed_baseline(monkeypatch):
    monkeypatch.setattr(P, "runtime_baseline", lambda refresh=False: BASELINE)
    P._CACHE.clear()


def _bert_params(vocab: int, h: int = 32, layers: int = 2, inter: int = 64, positions: int = 128,
                 types: int = 2, labels: int = 2) -> int:
    """BertForSequenceClassification's parameters, by hand."""
    embeddings = vocab * h + positions * h + types * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h
    pooler = h * h + h
    head = h * labels + labels
    return embeddings + layers * layer + pooler + head


def _lora_params(pairs: list[tuple[int, int]], r: int) -> int:
    """LoRA's A (r × in) and B (out × r) for each adapted (in, out) Linear."""
    return sum(r * i + o * r for i, o in pairs)


def test_full_and_lora_counts_match_hand_arithmetic(tiny_recipe):
    recipe = load_recipe(tiny_recipe("lora"))
    plan = P.estimate(recipe, strategies=("full", "lora"))
    full, lora = plan.rows
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(recipe.model.path))
    total = _bert_params(vocab)
    assert full.params_total == total
    assert full.params_trainable == total
    # r=4 on all-linear: q, k, v, o, intermediate, output of 2 layers, and the pooler; the
    # head trains in full (modules_to_save keeps a copy of it).
    h, inter, r = 32, 64, 4
    adapted = 2 * ([(h, h)] * 4 + [(h, inter), (inter, h)]) + [(h, h)]
    head = h * 2 + 2
    assert lora.params_trainable == _lora_params(adapted, r) + head
    assert lora.params_total == total + _lora_params(adapted, r) + head
    # fp32 weights, gradients and AdamW's two moments, by hand
    assert full.cpu.weights >= 4 * total  # + buffers (position ids, token types)
    assert full.cpu.weights - 4 * total < 4096
    assert full.cpu.gradients == 4 * total
    assert full.cpu.optimizer == 8 * total
    assert lora.cpu.gradients == 4 * lora.params_trainable
    assert lora.cpu.optimizer == 8 * lora.params_trainable


@pytest.mark.parametrize("task,strategy", [("classification", "lora"), ("causal-lm", "lora"),
                                           ("classification", "full")])
def test_trainable_counts_equal_the_really_wrapped_model(tiny_recipe, task, strategy):
    from pefttool.models import load_model
    from pefttool.plugins import get_plugin_host

    recipe = load_recipe(tiny_recipe(strategy, task, **{"method.dropout": 0.1} if strategy == "lora" else {}))
    st = get_plugin_host().strategies[strategy]
    model = st.wrap(load_model(recipe, st, recipe.strategy_options), recipe, recipe.strategy_options)
    if strategy == "lora":
        trainable, total = model.get_nb_trainable_parameters()  # PEFT's own count
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    row = P.estimate(recipe, strategies=(strategy,)).own
    assert row.params_trainable == trainable
    assert row.params_total == total


def test_meta_activation_count_equals_a_real_cpu_forward(tiny_recipe):
    """What the meta-device pass says autograd saves equals what a real forward saves."""
    import torch

    from pefttool.models import load_model
    from pefttool.plugins import get_plugin_host

    recipe = load_recipe(tiny_recipe("lora", **{"method.dropout": 0.1}))
    st = get_plugin_host().strategies["lora"]
    model = st.wrap(load_model(recipe, st, recipe.strategy_options), recipe, recipe.strategy_options)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    batch, length = 4, recipe.data.max_length
    ids = torch.randint(1000, 2000, (batch, length))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=torch.zeros(batch, dtype=torch.long))
    real = sum(seen.values())

    row = P.estimate(recipe.model_copy(update={"train": recipe.train.model_copy(update={"batch_size": batch})}),
                     device=24, strategies=("lora",)).own
    step_gpu, step_cpu = row.memory("training", "gpu"), row.memory("training", "cpu")
    assert step_gpu.activations == pytest.approx(real, rel=0.05)
    assert step_cpu.activations >= step_gpu.activations  # + freed temporaries kept in the heap


def _step_activations(recipe) -> int:
    return P.estimate(recipe, device=8, strategies=("lora",)).own.memory("training", "gpu").activations


def test_activations_scale_with_batch_and_checkpointing_and_eager_attention(tiny_recipe, tmp_path):
    base = load_recipe(tiny_recipe("lora", "causal-lm"))
    small = _step_activations(base)
    double = load_recipe(tiny_recipe("lora", "causal-lm", **{"train.batch_size": 16}))
    assert _step_activations(double) == pytest.approx(2 * small, rel=0.01)
    gc = load_recipe(tiny_recipe("lora", "causal-lm", **{"train.gradient_checkpointing": True}))
    gc_row = P.estimate(gc, device=8, strategies=("lora",)).own
    assert gc_row.gradient_checkpointing and gc_row.memory("training", "gpu").activations < small
    eager = load_recipe(tiny_recipe("lora", "causal-lm", **{"model.attn_implementation": "eager"}))
    assert _step_activations(eager) > small


class _LiveBytes:
    """A real forward's live tensor bytes over time (a dispatch mode: each new storage counts
    until its last tensor dies), and their peak. Parameters, buffers and inputs excluded."""

    def __init__(self, known):
        import weakref

        from torch.utils import _pytree as pytree
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.seen, self.live, self.peak = {id(t.untyped_storage()) for t in known}, 0, 0

        def free(n, key):
            counter.live -= n
            counter.seen.discard(key)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in pytree.tree_leaves(out):
                    if hasattr(t, "untyped_storage") and id(t.untyped_storage()) not in counter.seen:
                        storage = t.untyped_storage()
                        counter.seen.add(id(storage))
                        counter.live += storage.nbytes()
                        counter.peak = max(counter.peak, counter.live)
                        weakref.finalize(storage, free, storage.nbytes(), id(storage))
                return out

        self.mode = Mode()


@pytest.mark.parametrize("chunks", [None, 0], ids=["chunked-loss", "full-logits"])
def test_the_evaluation_peak_bounds_a_real_no_grad_forward(tiny_recipe, chunks):
    """An evaluation batch much larger than the training batch makes the evaluation the peak
    (issue 31: a chat run's peak was its evaluation, which plan left out): its activations are
    at least a real eval forward's live peak, and not far above it; no gradients then. With the
    loss in chunks (the default) and over the full logits (train.loss_chunks = 0)."""
    import torch

    from pefttool.losses import set_loss_chunks
    from pefttool.models import load_model
    from pefttool.plugins import get_plugin_host
    from pefttool.settled import settle

    keys = {"eval.batch_size": 64, "train.batch_size": 2, "train.loss_chunks": chunks}
    recipe = load_recipe(tiny_recipe("lora", "causal-lm", **keys))
    st = get_plugin_host().strategies["lora"]
    model = st.wrap(load_model(recipe, st, recipe.strategy_options), recipe, recipe.strategy_options)
    set_loss_chunks(model, settle(recipe).loss_chunks)   # as the engine does
    model.eval()
    ids = torch.randint(5, 100, (64, recipe.data.max_length))
    live = _LiveBytes([*model.parameters(), *model.buffers(), ids])
    with torch.no_grad(), live.mode:
        model(input_ids=ids, labels=ids)
    assert live.live == 0 < live.peak

    row = P.estimate(recipe, device=8, strategies=("lora",)).own
    assert row.peak_phase("gpu") == "evaluation" and row.peak_phase("cpu") == "evaluation"
    assert row.gpu.total == row.phases["gpu"]["evaluation"] > row.phases["gpu"]["training"]
    assert row.gpu.gradients == 0 and row.gpu.optimizer > 0
    assert live.peak <= row.gpu.activations <= 1.25 * live.peak
    # The CPU keeps the training step's freed small blocks in its heap: the evaluation comes on top.
    assert row.cpu.activations >= row.gpu.activations

    double = load_recipe(tiny_recipe("lora", "causal-lm", **{**keys, "eval.batch_size": 128}))
    assert P.estimate(double, device=8, strategies=("lora",)).own.gpu.activations == pytest.approx(
        2 * row.gpu.activations, rel=0.01)
    small = load_recipe(tiny_recipe("lora", "causal-lm", **{**keys, "eval.batch_size": 1, "train.batch_size": 16}))
    small_row = P.estimate(small, device=8, strategies=("lora",)).own
    assert small_row.peak_phase("gpu") == "training" and small_row.gpu.gradients > 0


def test_optimizer_state_arithmetic():
    fp32 = 4
    matrix, vector, small = (4096 * 2, (4096, 2), fp32), (64, (64,), fp32), (100, (10, 10), fp32)
    assert P._optimizer_bytes("adamw", [matrix, vector]) == 8 * (4096 * 2 + 64)
    # 8-bit: 2 bytes/value + a fp32 absmax per 256 values; under 4,096 values fp32 state
    assert P._optimizer_bytes("adamw_8bit", [matrix]) == 2 * (8192 + 4 * 32)
    assert P._optimizer_bytes("adamw_8bit", [small]) == 8 * 100
    # Adafactor (no momentum): row + column for a matrix, a full second moment for a vector
    assert P._optimizer_bytes("adafactor", [matrix, vector]) == fp32 * (4096 + 2) + fp32 * 64


def test_nf4_size_arithmetic():
    # 4,096 weights: 2,048 bytes + 64 blocks; double quant: 64 one-byte absmax + 1 fp32 per
    # 256 blocks + the two 256-entry code books; single: 64 fp32 absmax + one code book
    assert P._nf4_bytes(4096, True) == 2048 + 64 + 4 + 2 * 1024
    assert P._nf4_bytes(4096, False) == 2048 + 4 * 64 + 1024


def test_qlora_weights_match_bitsandbytes_on_a_real_load(tiny_recipe):
    pytest.importorskip("bitsandbytes")
    from pefttool.models import load_model
    from pefttool.plugins import get_plugin_host

    recipe = load_recipe(tiny_recipe("qlora"))
    st = get_plugin_host().strategies["qlora"]
    model = st.wrap(load_model(recipe, st, recipe.strategy_options), recipe, recipe.strategy_options)
    real = st.describe(model)
    row = P.estimate(recipe, strategies=("qlora",)).own
    assert row.params_trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert row.cpu.weights / MiB == pytest.approx(real["model_memory_mb"], rel=0.05)
    full = next(r for r in P.estimate(recipe, strategies=("full",)).rows if r.strategy == "full")
    assert row.cpu.weights < full.cpu.weights


@pytest.mark.parametrize("strategy", ["full", "lora", "qlora"])
def test_checkpoint_size_matches_a_real_checkpoint(strategy, tiny_recipe):
    """plan's "checkpoint on disk" against the weights and optimizer files a run writes (the
    whole model for full; for LoRA/QLoRA the trainable tensors only)."""
    if strategy == "qlora":
        pytest.importorskip("bitsandbytes")
    from pefttool.engine import run_recipe

    recipe = load_recipe(tiny_recipe(strategy, **{"train.max_steps": 2, "train.checkpoint_every": 2,
                                                  "eval.before_training": False}))
    row = P.estimate(recipe, strategies=(strategy,)).own
    checkpoint = run_recipe(recipe).run_dir / "checkpoints" / "step-0000002"
    written = sum((checkpoint / name).stat().st_size for name in ("model.safetensors", "optimizer.bin"))
    # torch.save's pickle and safetensors' header add a few KB to a tiny model's files
    assert row.checkpoint == pytest.approx(written, rel=0.1), (row.checkpoint, written)
    if strategy != "full":
        assert row.checkpoint < 0.5 * P.estimate(recipe, strategies=("full",)).rows[0].checkpoint


def test_gpu_fit_and_headroom(tiny_recipe):
    recipe = load_recipe(tiny_recipe("lora"))
    roomy = P.estimate(recipe, device=24).own.gpu
    assert roomy.fits and roomy.headroom == 24 * 2**30 - roomy.total
    assert "fits" in P.estimate(recipe, device=24).summary() and "lora:" in P.estimate(recipe, device=24).summary()
    tiny = P.estimate(recipe, device=0.001).own.gpu
    assert tiny.fits is False and tiny.headroom < 0
    with pytest.raises(P.PefttoolError):
        P.estimate(recipe, device=-1)


def test_cli_text_and_json(tiny_recipe, capsys):
    from pefttool.cli import main

    path = tiny_recipe("lora", rows=80)
    assert main(["plan", str(path), "--gpu-gib", "24"]) == 0
    out = capsys.readouterr().out
    assert "lora *" in out and "CPU peak (RSS)" in out and "GPU 24 GiB peak" in out
    assert "training / eval" in out and "peak during" in out
    assert "steps/epoch" in out
    assert main(["plan", str(path), "--json", "--set", "train.batch_size=4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["strategy"] for s in data["strategies"]][:2] == ["full", "lora"]
    own = next(s for s in data["strategies"] if s["own"])
    assert own["strategy"] == "lora" and own["cpu"]["total"] == sum(
        own["cpu"][k] for k in ("runtime", "weights", "gradients", "optimizer", "activations", "other"))
    assert own["cpu"]["total"] == max(own["phases"]["cpu"].values())  # the peak is the larger phase
    assert data["batch_size"] == 4
    d = data["data"]  # 80 rows, 25 % held out, batch 4, 2 epochs
    assert d["train_rows"] == 60 and d["eval_rows"] == 20
    assert d["steps_per_epoch"] == math.ceil(60 / 4) and d["total_steps"] == 2 * 15
    assert 0 < d["tokens_per_epoch"] <= d["padded_tokens_per_epoch"] <= 60 * 32


@pytest.mark.parametrize("argv,needle", [
    (["plan", "nope.toml"], "nope.toml"),
    (["plan", "{recipe}", "--set", "train.batch_size=0"], "train.batch_size"),
    (["plan", "{recipe}", "--set", "method.strategy=\"lorra\""], "method.strategy"),
    (["plan", "{recipe}", "--calibrate", "--calibrate-steps", "1"], "--calibrate-steps"),
])
def test_bad_input_is_one_line_exit_2(tiny_recipe, capsys, argv, needle):
    from pefttool.cli import main

    path = tiny_recipe("lora")
    code = main([a.replace("{recipe}", str(path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err


def test_bad_gpu_size_is_refused_by_the_parser(tiny_recipe, capsys):
    from pefttool.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["plan", str(tiny_recipe("lora")), "--gpu-gib", "-3"])
    assert exc.value.code == 2
    assert "positive size in GiB" in capsys.readouterr().err


def test_calibrate_runs_real_steps_and_cleans_up(tiny_recipe, tmp_path, monkeypatch):
    import tempfile

    path = tiny_recipe("lora")
    recipe = load_recipe(path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cal = P.calibrate(path, [], recipe, steps=3, total_steps=30)
    assert cal.steps == 3 and cal.sec_per_step > 0 and cal.peak_rss > 50 * MiB
    assert cal.estimated_train_s == pytest.approx(cal.setup_s + 30 * cal.sec_per_step, abs=0.2)
    assert list(scratch.iterdir()) == []  # the calibration run's folder is gone
    plan = P.estimate(recipe)
    plan.calibration = cal
    assert "estimated training time" in P.render(plan)
    assert not (tmp_path / "runs").exists()  # and the recipe's own output dir was not used


@pytest.mark.parametrize("task, strategy, extra", [
    ("causal-lm", "lora", {"data.packing": True}),
    ("causal-lm", "lora", {"data.packing": False}),
    ("causal-lm", "qlora", {"data.packing": True, "train.grad_accum": 2}),
    ("classification", "full", {"data.group_by_length": True, "train.batch_size": 5,
                                "train.gradient_checkpointing": True, "model.dtype": "bfloat16"}),
])
def test_plan_counts_the_steps_the_run_takes(task, strategy, extra, tiny_recipe):
    """plan's steps per epoch and total, gradient checkpointing and trainable dtype are the
    run's own (its start event): one settled run (pefttool/settled.py), packing, accumulation
    and a memory-first strategy's checkpointing default included. Packing was 19 vs 4 before."""
    from pefttool.engine import run_recipe
    from pefttool.events import StartEvent, read_events

    if strategy == "qlora":
        pytest.importorskip("bitsandbytes")
    recipe = load_recipe(tiny_recipe(strategy, task, rows=150, **{
        "train.epochs": 3, "train.max_steps": None, "eval.before_training": False, **extra}))
    data = P.data_estimate(recipe)

    class StopAtStart:
        @__import__("pefttool").hookimpl
        def pefttool_run_start(self, event):
            raise RuntimeError("enough")

    with pytest.raises(Exception, match="enough"):
        run_recipe(recipe, observers=(StopAtStart(),))
    (start,) = [e for e in read_events(recipe.output_dir() / "events.jsonl") if isinstance(e, StartEvent)]
    assert (data.steps_per_epoch, data.total_steps) == (start.steps_per_epoch, start.total_steps)
    own = P.estimate(recipe, strategies=(strategy,)).own
    assert (own.gradient_checkpointing, own.trainable_dtype) == (start.gradient_checkpointing, start.dtype)
    assert start.gradient_checkpointing == (strategy == "qlora" or "train.gradient_checkpointing" in extra)
    if extra.get("data.packing"):
        assert data.steps_per_epoch < math.ceil(data.train_rows / recipe.train.batch_size)


def test_stopping_calibrate_ends_its_child_and_removes_its_folder(tiny_recipe, tmp_path):
    """Issue 30, item 6: SIGTERM to `pefttool plan --calibrate` (timeout, a closed session) left
    the training child running and a /tmp/pefttool-calibrate-* folder behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from fault_helpers import child_env

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    path = tiny_recipe("lora", **{"train.max_steps": 100000, "train.epochs": 1000})
    proc = subprocess.Popen([sys.executable, "-m", "pefttool.cli", "plan", str(path), "--calibrate",
                             "--calibrate-steps", "100000", "--no-data"],
                            env=child_env(TMPDIR=str(scratch)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    children: list = []
    while time.time() < deadline and not (children and list(scratch.glob("pefttool-calibrate-*/run"))):
        time.sleep(0.5)
        children = psutil.Process(proc.pid).children()
    assert children, "the calibration child never started"
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
    assert list(scratch.iterdir()) == []
