"""Shared test set-up: one torch thread (CI has 2 cores), no hub, quiet libraries."""

from __future__ import annotations

import os

# Before torch or transformers import anywhere: no hub, no progress bars, one thread.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(1)
    yield


# ---------------------------------------------------------------- tiny models (tests/tiny_models.py)
# Random hidden-32, 2-layer models saved like real ones (safetensors + the real MiniLM
# tokenizer), built once per session: engine, TUI and fault tests run on them in seconds.


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory):
    """BertForSequenceClassification, labels negative/positive. Treat as read-only."""
    from tiny_models import build_tiny_classifier

    return build_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory):
    """LlamaForCausalLM with a chat template, eos [SEP], pad [PAD]. Treat as read-only."""
    from tiny_models import build_tiny_causal

    return build_tiny_causal(tmp_path_factory.mktemp("tiny-causal"))


@pytest.fixture
def tiny_recipe(request, tmp_path):
    """A factory: tiny_recipe(strategy="lora", task="classification", **{"train.epochs": 1})
    writes a CSV + recipe TOML under tmp_path for the matching tiny model; returns its path."""
    from tiny_models import write_tiny_recipe

    def make(strategy="lora", task="classification", **kwargs):
        fixture = "tiny_classifier_dir" if task == "classification" else "tiny_causal_dir"
        return write_tiny_recipe(tmp_path, request.getfixturevalue(fixture), strategy, task, **kwargs)

    return make


# ---------------------------------------------------------------- parallel runs (pytest-xdist)
# `make test` runs the suite in 2 workers (`-n 2 --dist loadgroup`). A module-scoped fixture is
# built once per worker that runs one of its tests, and several cost seconds (finished runs,
# signalled children, 2-process runs): the tests using one stay together on one worker.
# Modules are handed out last file first (each module's own order kept): the long end-to-end
# modules (test_signals, test_tui_story, test_tui_terminal...) sort late, and run last they left
# one worker idle for ~25 s at the end. Without xdist (plain `pytest -q`, or xdist not
# installed) nothing is marked or reordered.


@pytest.hookimpl(tryfirst=True)   # before xdist reads the marks (it suffixes node ids with them)
def pytest_collection_modifyitems(config, items):
    if not getattr(config.option, "loadgroup", False):  # set in each xdist worker by --dist loadgroup
        return
    order = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: -order[item.path])
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        if any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
