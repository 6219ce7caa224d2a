"""TOML recipe → typed, validated `Recipe`.

Validation happens before anything heavy loads and reports every problem at once, each as
`key.path: what is wrong (got VALUE); what is allowed / the fix`. A strategy's options are
checked by the pydantic model the strategy itself declares, so a plugin's options are as
strict as the built-ins'.

This module imports no plugin code: the strategies' option models and the plugins' settings
models reach validation as a `PluginSchemas` parameter (`PluginHost.schemas()` builds one from
the installed plugins; a test or a tool can build one by hand). Only a caller that passes none
gets the installed plugins, looked up when it is called.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .errors import RecipeError, did_you_mean
from .locations import ADAPTER_CONFIG, LocationError, adapter_folder, looks_like_hub_id, resolve
from .schemas import HasSchemas, PluginSchemas
from .tasks import Task, get_task

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

# numpy's and torch's seeding accept 0 .. 2**32 - 1 (numpy refuses more).
MAX_SEED = 2**32 - 1


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, types are not coerced."""

    # inf/nan are never a sensible setting (weight_decay = inf trains into a NaN loss).
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)


class ModelSection(Section):
    path: str = Field(description="local folder, package:NAME/inner/path, or hub id org/name")
    gguf_file: str | None = Field(None, description="a .gguf file inside `path` to load from")
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = Field(False, description="allow pickle-based .bin weights (unsafe)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        None, description="attention kernel; unset: transformers' default (sdpa where supported)")
    reset_head: bool = Field(False, description="classification: replace a saved classifier's "
                             "trained head when task.labels names labels it does not know")
    adapter: str | None = Field(
        None, description="a PEFT adapter to train further (a finished run's folder, its model/, or "
        "an adapter folder) on model.path; a preference run's reference is the model with it")


class TaskSection(Section):
    """`type` names a task a plugin registered; `labels` and `format` mean the same for every
    task that reads them; any other key is the task's own option (its `Options` model)."""

    model_config = ConfigDict(extra="allow", strict=True, validate_default=True, allow_inf_nan=False)
    type: str = Field(description="a registered task (pefttool plugins lists them)")
    labels: list[str] | None = Field(None, description="the label set, in id order (tasks with "
                                     "labels: classification)")
    format: str | None = Field(
        None, description="the rows' format, one of the task's own (causal-lm: instruction, "
        "text or chat); unset: the task's first")

    @property
    def options(self) -> dict[str, Any]:
        """The task's own keys, as written (validated by the task's `Options`)."""
        return dict(self.model_extra or {})


# The [data] keys a source of data.train may set for itself (how its rows are read).
SOURCE_KEYS = ("format", "text_column", "label_column", "prompt_column", "response_column",
               "prompt_template", "response_map", "messages_column")


class DataSource(Section):
    """One file of a `data.train` list: its path, its share of an epoch, and how its rows are
    read where that differs from the [data] keys."""

    path: str = Field(description="a CSV, JSONL or Parquet file, as data.train names one")
    weight: float = Field(1.0, gt=0, le=100, description="how many times its rows go into an "
                          "epoch: 0.5 half of them (drawn with data.seed), 2 each twice")
    max_rows: int | None = Field(None, ge=1, description="use at most this many of its rows")
    format: Literal["auto", "csv", "json", "parquet"] | None = None
    text_column: str | None = None
    label_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    prompt_template: str | None = None
    response_map: dict[str, str] | None = None
    messages_column: str | None = None

    def overrides(self) -> dict[str, Any]:
        """The [data] keys this source sets for itself."""
        return {k: getattr(self, k) for k in SOURCE_KEYS if getattr(self, k) is not None}


class DataSection(Section):
    train: str | list[DataSource] = Field(description="a file, or a list of sources "
                                          "({path, weight, max_rows, their own columns...})")
    eval: str | None = None
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    format: Literal["auto", "csv", "json", "parquet"] = "auto"
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: str = "prompt"
    response_column: str = "response"
    prompt_template: str | None = Field(
        None, description="causal-lm: Python format string over the row's columns, e.g. '{text}'"
    )
    response_map: dict[str, str] | None = Field(
        None, description="causal-lm: map raw response values to the target text"
    )
    chat_template: bool | str = Field(
        True, description="causal-lm: render through the model's chat template (true), not "
        "(false), or through a Jinja template file (its path) instead of the model's own")
    system_prompt: str | None = Field(
        None, description="chat template: the system turn of every conversation without one "
        "(replaces the template's default); \"\" leaves the template's default text out")
    messages_column: str | None = Field(
        None, description="chat: the column holding each conversation; unset: 'messages', else "
        "'conversations'")
    train_on: Literal["assistant", "last_assistant", "all"] = Field(
        "assistant", description="chat: which tokens carry the loss: every assistant turn, the "
        "last one only, or the whole conversation")
    max_length: int = Field(128, ge=8, le=32768)
    max_train_rows: int | None = Field(None, ge=1)
    max_eval_rows: int | None = Field(None, ge=1)
    drop_duplicates: bool = True
    unknown_labels: Literal["drop", "error"] = Field(
        "drop", description="classification rows whose label is not in task.labels: drop and count, or stop")
    on_bad_rows: Literal["error", "skip"] = "error"
    group_by_length: bool = Field(False, description="batches of similar length (less padding, "
                                  "faster); shuffled between groups, still seeded")
    packing: bool = Field(False, description="causal-lm: several examples per row up to "
                          "max_length, each attending only to itself (no compute on padding)")
    strict: bool = Field(False, description="stop, rather than warn, on a tiny eval set or a label "
                         "with no training rows")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="fixes the shuffle and the held-out split")

    @field_validator("train")
    @classmethod
    def _some_source(cls, train: str | list[DataSource]) -> str | list[DataSource]:
        if isinstance(train, list) and not train:
            raise ValueError("an empty list; name a file, or list sources as {path = \"...\"}")
        return train

    @property
    def sources(self) -> list[DataSource]:
        """data.train as a list of sources (a single file: one source of weight 1)."""
        if isinstance(self.train, str):
            return [DataSource(path=self.train)]
        return list(self.train)

    @property
    def train_label(self) -> str:
        """data.train in a few words: the file, or the sources' names."""
        if isinstance(self.train, str):
            return self.train
        return " + ".join(Path(s.path).name for s in self.train)


# The strategy a recipe without `method.strategy` uses: the one place the core names a
# built-in strategy (tests/test_import_hygiene.py holds it to that).
DEFAULT_STRATEGY = "lora"


class MethodSection(BaseModel):
    """`strategy` plus that strategy's own options, validated by the strategy's schema."""

    model_config = ConfigDict(extra="allow", strict=True)
    strategy: str = DEFAULT_STRATEGY

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainSection(Section):
    epochs: int = Field(3, ge=1, le=1000)
    max_steps: int = Field(0, ge=0, description="stop after this many optimizer steps (0: no cap)")
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0, le=1, description="decoupled AdamW decay; above 1 it erases the weights")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = Field(1.0, ge=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(42, ge=0, le=MAX_SEED, description="fixes initialisation and data order")
    threads: int = Field(0, ge=0, description="torch threads on CPU (0: the free cores: all of them "
                         "on an idle machine)")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps (0: epoch ends)")
    keep_checkpoints: int = Field(2, ge=1)
    on_nan: Literal["stop", "skip"] = "stop"
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor"] = Field(
        "adamw", description="adamw_8bit: 8-bit state (bitsandbytes, ~1/4 the memory); paged_*: "
                             "GPU only; adafactor: factored second moments")
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in backward: far less memory, ~20-40 % slower; "
        "unset: on for causal-lm qlora")
    loss_chunks: int | None = Field(
        None, ge=0, le=4096, description="next-token loss from the hidden states in this many "
        "chunks of label tokens, never the full logits (a task whose loss is over a vocabulary: "
        "causal-lm, preference); 0: the model's own loss over the full logits; unset: 8")
    compile: bool = Field(
        False, description="torch.compile (inductor) the model for training: fused kernels, "
        "faster steps after a first step that compiles (tens of seconds); evaluation and "
        "generation run uncompiled")


class EvalSection(Section):
    every_steps: int = Field(0, ge=0, description="0: evaluate at each epoch end")
    metric: str | None = Field(None, description="one of the task's selectable metrics "
                               "(its metric table); unset: the task's default")
    batch_size: int = Field(64, ge=1)
    before_training: bool = True
    max_new_tokens: int = Field(8, ge=1, le=512)
    samples: int = Field(0, ge=0, le=64, description="causal-lm instruction/chat: replies to this "
                         "many held-out prompts written to samples.jsonl (before training and at "
                         "the best evaluation); 0: none")


class EarlyStoppingSection(Section):
    enabled: bool = True
    patience: int = Field(2, ge=1)
    min_delta: float = Field(0.0, ge=0)


class OutputSection(Section):
    dir: str = "runs/{name}"
    overwrite: bool = False


NAME_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,99})?$"
PLACEHOLDERS = ("name", "time")


class DistributedSection(Section):
    """Several processes: `pefttool run --processes N` (or `processes` here) launches them."""

    processes: int = Field(1, ge=1, le=1024, description="processes per machine (one per GPU)")
    config_file: str | None = Field(None, description="an Accelerate config (FSDP, DeepSpeed...); "
                                    "launched with accelerate launch --config_file")
    num_machines: int = Field(1, ge=1, description="machines in the run (multi-node)")
    machine_rank: int = Field(0, ge=0, description="this machine's index, 0 = the main one")
    main_process_ip: str = Field("127.0.0.1", description="address of machine 0, reachable by all")
    main_process_port: int = Field(29500, ge=1, le=65535)


class PluginsSection(BaseModel):
    """`on_error` plus a `[plugins.NAME]` table per plugin that takes settings, each validated
    by that plugin's own `PluginOptions` model."""

    model_config = ConfigDict(extra="allow", strict=True)
    on_error: Literal["stop", "warn"] = Field(
        "stop", description="an observer plugin raising: stop the run (checkpointed, exit 3) or warn")

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Recipe(Section):
    # A name, not a path: it is put into output.dir, and `../..` there must never move the run.
    name: str = Field("", description="letters, digits, '-', '_' and '.', starting with a letter or digit")
    description: str = ""
    setup: str = Field("", description="the command that creates this recipe's local files "
                       "(e.g. `make chat-data`); a missing model or data path's error names it")

    @field_validator("name")
    @classmethod
    def _name_is_a_name(cls, name: str) -> str:
        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError("a recipe name holds letters, digits, '-', '_' and '.' only, starts with "
                             "a letter or digit and has at most 100 characters (it becomes part of "
                             "output.dir)")
        return name
    model: ModelSection
    task: TaskSection
    data: DataSection
    method: MethodSection = MethodSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    early_stopping: EarlyStoppingSection = EarlyStoppingSection()
    output: OutputSection = OutputSection()
    plugins: PluginsSection = PluginsSection()
    distributed: DistributedSection = DistributedSection()

    # Set by `validate_recipe`, never by the TOML: where relative paths are resolved from,
    # where the recipe came from, and the strategy's validated options.
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr("<recipe>")
    _strategy_options: BaseModel | None = PrivateAttr(None)
    _task: Task | None = PrivateAttr(None)
    _task_options: BaseModel | None = PrivateAttr(None)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    @property
    def strategy_options(self) -> BaseModel:
        assert self._strategy_options is not None, "recipe was not validated by validate_recipe"
        return self._strategy_options

    @property
    def task_options(self) -> BaseModel:
        """The task's validated options (`Task.Options`: the `[task]` keys of its own)."""
        assert self._task_options is not None, "recipe was not validated by validate_recipe"
        return self._task_options

    @property
    def metric(self) -> str:
        if self.eval.metric:
            return self.eval.metric
        return get_task(self).default_metric

    @property
    def higher_is_better(self) -> bool:
        return get_task(self).higher_is_better(self.metric)

    def for_source(self, source: DataSource) -> Recipe:
        """This recipe as one source of data.train reads: data.train its path, with the
        [data] keys it sets for itself."""
        data = self.data.model_copy(update={"train": source.path, **source.overrides()})
        return self.model_copy(update={"data": data})

    def output_dir(self, time_tag: str = "") -> Path:
        """The run directory: `output.dir` with {name} and {time} filled in, made absolute.

        Relative output paths are taken from the current directory (where the user runs
        pefttool), not from the recipe's folder, so built-in recipes write into the user's tree.
        """
        text = self.output.dir.replace("{name}", self.name).replace("{time}", time_tag or "*")
        out = Path(text).expanduser()
        return out if out.is_absolute() else Path.cwd() / out

    def resolve_path(self, location: str) -> Path:
        return resolve(location, self.base_dir)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (strategy options with their defaults filled in)."""
        data = self.model_dump(mode="json", exclude_none=True)
        if self._strategy_options is not None:
            data["method"] = {"strategy": self.method.strategy,
                              **self._strategy_options.model_dump(mode="json", exclude_none=True)}
        if self._task_options is not None:
            data["task"] = {**{k: v for k, v in data["task"].items() if k in TaskSection.model_fields},
                            **self._task_options.model_dump(mode="json", exclude_none=True)}
        return data


# ---------------------------------------------------------------- loading and overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=2e-4` → (['train', 'lr'], 2e-4). The value is read as TOML, else as a string."""
    if not isinstance(text, str):  # argparse turns `--set=--` into [] (it drops the "--")
        text = " ".join(map(str, text)) if isinstance(text, (list, tuple)) else str(text)
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError("--set", [f"'{text}' is not KEY=VALUE; write e.g. --set train.lr=2e-4"])
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError("--set", [f"{'.'.join(path)}: '{part}' is not a table"])
            node = child
        node[path[-1]] = value
    return data


# A recipe is a few kilobytes; anything past this is not one (and /dev/zero never ends).
MAX_RECIPE_BYTES = 1 << 20


def read_toml(path: Path) -> dict[str, Any]:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise RecipeError(str(path), ["file not found; check the path (pefttool recipes lists them)"]) from None
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read: {exc.strerror}"]) from None
    if stat.S_ISDIR(info.st_mode):
        raise RecipeError(str(path), ["is a directory, not a recipe file"])
    if not stat.S_ISREG(info.st_mode):
        # A FIFO would block the read forever, a device would never end: stat, never open.
        raise RecipeError(str(path), ["is not a regular file (a pipe, device or socket); "
                                      "point at a .toml file"])
    if info.st_size > MAX_RECIPE_BYTES:
        raise RecipeError(str(path), [f"is {info.st_size:,} bytes, too large for a recipe "
                                      f"(at most {MAX_RECIPE_BYTES:,}); point at a .toml recipe"])
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), ["file not found; check the path (pefttool recipes lists them)"]) from None
    except IsADirectoryError:
        raise RecipeError(str(path), ["is a directory, not a recipe file"]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [f"not UTF-8 text (byte {exc.start}); save it as UTF-8"]) from None
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [f"not valid TOML: {exc}"]) from None


def _schemas(plugins: PluginSchemas | HasSchemas | None) -> PluginSchemas:
    """`plugins` as validation needs it: a `PluginSchemas`, anything with `.schemas()` (a
    `PluginHost`), or None for the installed plugins."""
    if plugins is None:
        from .plugins import get_plugin_host  # only here: the caller asked for the installed ones

        plugins = get_plugin_host()
    return plugins if isinstance(plugins, PluginSchemas) else plugins.schemas()


def load_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    plugins: PluginSchemas | HasSchemas | None = None,
    check_files: bool = True,
) -> Recipe:
    """Read, override and validate a recipe; raise `RecipeError` listing every problem.

    `plugins`: the `PluginSchemas` (or a `PluginHost`) to validate `[method]` and `[plugins.*]`
    against; None: the installed plugins."""
    path = Path(path)
    data = apply_overrides(read_toml(path), overrides or [])
    # The file's stem is the default name; characters a name may not hold become '-'.
    data.setdefault("name", re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lstrip("._-")[:100])
    return validate_recipe(data, source=str(path), base_dir=path.parent.resolve(),
                           plugins=plugins, check_files=check_files)


def validate_recipe(
    data: dict[str, Any],
    source: str = "<recipe>",
    base_dir: Path | None = None,
    plugins: PluginSchemas | HasSchemas | None = None,
    check_files: bool = True,
) -> Recipe:
    """Validate plain data as a recipe; every problem is collected before raising.

    `plugins` as for `load_recipe`: the strategy's options are checked by
    `plugins.options_for(method.strategy)`."""
    schemas = _schemas(plugins)
    problems: list[str] = []
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems += _describe_all(exc, Recipe, data)

    method = data.get("method", {}) if isinstance(data.get("method", {}), dict) else {}
    strategy_name = method.get("strategy", DEFAULT_STRATEGY)
    options_model = None
    if isinstance(strategy_name, str):
        options = schemas.options_for(strategy_name)
        if options is None:
            known = sorted(schemas.strategies)
            hint = _unknown_hint(strategy_name, known, schemas)
            problems.append(
                f"method.strategy: no strategy named '{strategy_name}'{hint}; loaded: "
                f"{', '.join(known) or 'none'} (pefttool plugins lists them)"
            )
        else:
            opts = {k: v for k, v in method.items() if k != "strategy"}
            try:
                options_model = options.model_validate(opts, strict=True)
            except ValidationError as exc:
                problems += _describe_all(exc, options, opts, prefix="method",
                                          also_allowed=["strategy"])

    task, task_options = _task_problems(data.get("task"), schemas, problems)
    problems += _plugin_settings_problems(data.get("plugins"), schemas)
    if recipe is not None and task is not None:
        recipe._task, recipe._task_options = task, task_options
        if recipe.task.format is None and task.formats:
            recipe.task.format = task.formats[0]  # the task's default format
        problems += _cross_checks(recipe, task)
    if check_files:
        # On the raw data, so a missing file is reported even when a typo elsewhere stopped
        # the typed recipe from being built.
        problems += _file_checks(data, base_dir or Path.cwd())
    if problems:
        raise RecipeError(source, problems)
    assert recipe is not None
    recipe._base_dir = base_dir or Path.cwd()
    recipe._source = source
    recipe._strategy_options = options_model
    return recipe


def _unknown_hint(name: str, known: list[str], schemas: PluginSchemas) -> str:
    """For a strategy or task no plugin registered: did-you-mean, the plugins PEFTTOOL_PLUGINS
    left out, and the plugins that failed to load (one of them may add it)."""
    hint = did_you_mean(name, known)
    if schemas.left_out:
        hint += (f"; PEFTTOOL_PLUGINS left out the installed plugin(s) "
                 f"{', '.join(schemas.left_out)}, which may add it: include them to use it")
    for broken in schemas.broken.values():
        hint += f"; {broken}"
    return hint


def _task_problems(section: Any, schemas: PluginSchemas,
                   problems: list[str]) -> tuple[Task | None, BaseModel | None]:
    """The registered task `task.type` names and its validated options; what is wrong with
    them goes into `problems` (an unknown type: did-you-mean, and the plugins that may add it)."""
    if not isinstance(section, dict) or not isinstance(section.get("type"), str):
        return None, None  # the schema reports a missing or mistyped task.type
    name = section["type"]
    task = schemas.tasks.get(name)
    if task is None:
        known = sorted(schemas.tasks)
        hint = _unknown_hint(name, known, schemas)
        problems.append(f"task.type: no task named '{name}'{hint}; loaded: "
                        f"{', '.join(known) or 'none'} (pefttool plugins lists them)")
        return None, None
    opts = {k: v for k, v in section.items() if k not in TaskSection.model_fields}
    try:
        return task, task.Options.model_validate(opts, strict=True)
    except ValidationError as exc:
        problems += _describe_all(exc, task.Options, opts, prefix="task",
                                  also_allowed=list(TaskSection.model_fields))
        return None, None


def _plugin_settings_problems(section: Any, schemas: PluginSchemas) -> list[str]:
    """Each `[plugins.NAME]` table is checked by plugin NAME's own `PluginOptions` model."""
    if not isinstance(section, dict):
        return []
    problems = []
    for name, table in section.items():
        if name == "on_error":
            continue
        if name not in schemas.settings:
            loaded = sorted(schemas.settings)
            problems.append(f"plugins.{name}: no plugin named '{name}' is loaded"
                            f"{did_you_mean(name, loaded)}; loaded: {', '.join(loaded) or 'none'}")
            continue
        options = schemas.settings[name]
        if options is None:
            problems.append(f"plugins.{name}: plugin '{name}' takes no settings (it defines no "
                            f"PluginOptions); remove the table")
            continue
        if not isinstance(table, dict):
            problems.append(f"plugins.{name}: must be a table of settings (got {table!r})")
            continue
        try:
            options.model_validate(table, strict=True)
        except ValidationError as exc:
            problems += _describe_all(exc, options, table, prefix=f"plugins.{name}")
    return problems


def _cross_checks(recipe: Recipe, task: Task) -> list[str]:
    """Problems that involve more than one key, or this machine."""
    problems = []
    fmt = recipe.task.format
    if task.formats and fmt not in task.formats:
        problems.append(f"task.format: '{fmt}' is not a format of task '{task.type}'"
                        f"{did_you_mean(str(fmt), list(task.formats))}; use one of "
                        f"{', '.join(task.formats)}")
    else:
        problems += task.check_recipe(recipe)
    if recipe.eval.samples and not task.has_prompts(recipe):
        problems.append(f"eval.samples: {recipe.eval.samples} needs held-out prompts to reply "
                        f"to, and task '{task.type}'{f' with task.format {fmt!r}' * bool(fmt)} "
                        f"has none; set it to 0")
    if recipe.train.mixed_precision == "fp16" and not _cuda_available():
        problems.append("train.mixed_precision: 'fp16' is unusable without a GPU (one matmul takes "
                        "tens of seconds on CPU); use \"bf16\" or \"no\"")
    if recipe.data.packing and not task.packs:
        problems.append(f"data.packing: true, but task.type is '{recipe.task.type}'; packing joins causal-LM "
                        "examples into rows, set data.packing = false (data.group_by_length "
                        "reduces padding for any task)")
    elif recipe.data.packing and recipe.data.group_by_length:
        problems.append("data.packing: true together with data.group_by_length = true; packed "
                        "rows have no padding to group away, set data.group_by_length = false")
    if recipe.model.attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            problems.append("model.attn_implementation: 'flash_attention_2' needs the flash-attn "
                            "package (pip install flash-attn) and a CUDA GPU; use \"sdpa\"")
        elif not _cuda_available():
            problems.append("model.attn_implementation: 'flash_attention_2' needs a CUDA GPU, and "
                            "none is visible; use \"sdpa\"")
    dist = recipe.distributed
    if dist.machine_rank >= dist.num_machines:
        problems.append(f"distributed.machine_rank: {dist.machine_rank} but num_machines is "
                        f"{dist.num_machines}; ranks are 0..{dist.num_machines - 1}")
    if dist.config_file is not None and not Path(dist.config_file).expanduser().is_file():
        problems.append(f"distributed.config_file: '{dist.config_file}' is not a file; write an "
                        f"Accelerate config with `accelerate config --config_file PATH`")
    cores = os.cpu_count() or 1
    if recipe.train.threads > cores:
        problems.append(f"train.threads: {recipe.train.threads} is more than this machine's {cores} "
                        f"CPU cores; use at most {cores}, or 0 for all of them")
    if dist.processes > 1:  # processes on this machine: one per GPU, or one per core on gloo
        gpus = _cuda_device_count() if recipe.train.device != "cpu" else 0
        if gpus and dist.processes > gpus:
            problems.append(f"distributed.processes: {dist.processes} is more than this machine's {gpus} "
                            f"visible GPU(s); use at most {gpus} (one process per GPU)")
        elif not gpus and dist.processes > cores:
            problems.append(f"distributed.processes: {dist.processes} is more than this machine's {cores} "
                            f"CPU cores, and no GPU is {'used' if recipe.train.device == 'cpu' else 'visible'} "
                            f"(gloo: one process per core); use at most {cores}")
    if recipe.train.compile:
        problem = compile_problem(recipe.train.device, _cuda_available)
        if problem:
            problems.append(problem)
    from .optim import optimizer_problem

    optimizer = optimizer_problem(recipe.train.optimizer, recipe.train.device, _cuda_available)
    if optimizer:
        problems.append(optimizer)
    if recipe.train.device == "cuda" and not _cuda_available():
        problems.append("train.device: 'cuda' but no GPU is visible; use \"auto\" or \"cpu\"")
    out = recipe.output.dir
    unknown = [p for p in re.findall(r"\{([^{}]*)\}", out) if p not in PLACEHOLDERS]
    if unknown:
        problems.append(f"output.dir: '{{{unknown[0]}}}' is not a placeholder; use {{name}} and "
                        f"{{time}} only (or write the folder name out)")
    control = [c for c in out if ord(c) < 32 or ord(c) == 127]
    if "\x00" in out:
        problems.append("output.dir: contains a NUL character, which no path can hold; write a "
                        "plain path")
    elif control:
        what = "a newline" if control[0] in "\r\n" else f"the control character {control[0]!r}"
        problems.append(f"output.dir: contains {what} ({out!r}), which would split the run's "
                        f"folder name over lines in pefttool runs and logs; write the path on "
                        f"one line, without control characters")
    else:
        try:
            Path(out).expanduser()
        except RuntimeError:
            problems.append(f"output.dir: cannot expand '~' in '{out}' (no such user, or no home "
                            f"directory); write the full path")
    # {time} becomes 20261128-141500, and a taken name gets -2... -999
    filled = out.replace("{name}", recipe.name).replace("{time}", "00000000-000000-999")
    long = [part for part in Path(filled).parts if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX]
    if long:
        problems.append(f"output.dir: the folder name '{long[0][:40]}...' is "
                        f"{len(long[0].encode('utf-8', 'surrogatepass'))} bytes (with {{name}} and "
                        f"{{time}} filled in); file systems take at most {NAME_MAX} bytes per name, "
                        f"so shorten it")
    return problems


NAME_MAX = 255  # bytes in one path component (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units)


def _file_checks(data: dict[str, Any], base_dir: Path) -> list[str]:
    """The model and data files named in raw recipe data exist (values of the wrong type are
    skipped: the schema already reports those)."""
    model_value, data_value = data.get("model"), data.get("data")
    model: dict[str, Any] = model_value if isinstance(model_value, dict) else {}
    data_section: dict[str, Any] = data_value if isinstance(data_value, dict) else {}
    gguf_file = model.get("gguf_file")
    problems = []
    setup = data.get("setup")
    fix = (f"run `{setup}` (the recipe's setup) to create it, or fix the path"
           if isinstance(setup, str) and setup.strip() else "fix the path")
    template = data_section.get("chat_template")
    train = data_section.get("train")
    trains = ([(f"data.train[{i}].path", src.get("path")) for i, src in enumerate(train) if isinstance(src, dict)]
              if isinstance(train, list) else [("data.train", train)])
    for key, loc in (("model.path", model.get("path")), ("model.adapter", model.get("adapter")),
                     *trains,
                     ("data.eval", data_section.get("eval")),
                     ("data.chat_template", template if isinstance(template, str) else None)):
        if not isinstance(loc, str):
            continue
        try:
            path = resolve(loc, base_dir)
        except LocationError as exc:
            problems.append(f"{key}: {exc}")
            continue
        if key == "model.path" and not path.exists() and looks_like_hub_id(loc):
            continue  # a hub id: resolved at load time
        if not path.exists():
            # The recipe's folder first (where relative paths are meant), then the current one.
            places = dict.fromkeys(str(p) for p in ((base_dir / path).absolute(), path.absolute()))
            looked = " and ".join(places)
            problems.append(f"{key}: '{loc}' does not exist (looked at {looked}); {fix}")
        elif key == "model.adapter" and adapter_folder(path) is None:
            problems.append(f"{key}: '{loc}' holds no PEFT adapter ({ADAPTER_CONFIG}, in it or in its "
                            f"model/ folder); a full fine-tune's model is a model: set model.path to it")
        elif key == "model.path" and isinstance(gguf_file, str) and not (path / gguf_file).is_file():
            problems.append(f"model.gguf_file: '{gguf_file}' is not a file in {path}")
        elif key == "data.chat_template" and not path.is_file():
            problems.append(f"{key}: '{loc}' is not a file; name a Jinja chat template file, or "
                            f"set true (the model's own template) or false")
        elif key.startswith("data.") and path.is_dir():
            problems.append(f"{key}: '{loc}' is a directory; name a CSV, JSONL or Parquet file")
        elif key.startswith("data.") and not path.is_file():  # a FIFO would hang the read, /dev/zero never end
            problems.append(f"{key}: '{loc}' is not a regular file (a pipe, device or socket); name a "
                            f"CSV, JSONL or Parquet file")
    return problems


def compile_problem(device: str, cuda_available: Any) -> str | None:
    """Why `train.compile = true` cannot run here (one line), or None. torch.compile's
    inductor backend writes Triton kernels on a GPU and C++ kernels on CPU, which it builds with
    the C++ compiler torch looks for ($CXX, else g++; clang++ on macOS; cl on Windows) against
    Python's C headers. Checked without importing torch (`cuda_available` is only called for
    train.device = "auto")."""
    import importlib.util
    import shutil
    import sys
    import sysconfig

    fix = "or set train.compile = false"
    if device == "cuda" or (device == "auto" and cuda_available()):
        if importlib.util.find_spec("triton") is None:
            return (f"train.compile: true compiles GPU kernels with Triton, which is not installed; "
                    f"pip install triton (Linux; on Windows: triton-windows), {fix}")
        return None
    default = "cl" if sys.platform == "win32" else "clang++" if sys.platform == "darwin" else "g++"
    cxx = os.environ.get("CXX") or default
    if shutil.which(cxx) is None:
        how = {"win32": "run from a Visual Studio Developer Command Prompt (MSVC cl.exe)",
               "darwin": "xcode-select --install"}.get(sys.platform, "e.g. apt install g++")
        return (f"train.compile: true builds C++ kernels on CPU with '{cxx}' (torch inductor; "
                f"$CXX names another), which is not on PATH; install a C++ compiler ({how}), {fix}")
    include = sysconfig.get_paths().get("include") or ""
    if not Path(include, "Python.h").is_file():
        return (f"train.compile: true builds C++ kernels against Python's C headers, and "
                f"{include}/Python.h is missing; install your Python's development files (e.g. "
                f"apt install python3-dev), {fix}")
    return None


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cuda_available() -> bool:
    # Only asked when the recipe wants a GPU, so `validate` stays fast on the common path.
    import torch

    return torch.cuda.is_available()


def _describe_all(exc: ValidationError, model: type[BaseModel], data: Any,
                  prefix: str = "", also_allowed: list[str] | None = None) -> list[str]:
    """One line per problem. A value that fits no member of a union (`list[str] | 'all-linear'`)
    is one problem, not one per member."""
    problems: list[str] = []
    unions_seen: set[tuple] = set()
    for err in exc.errors():
        loc, union = _union_at(model, err["loc"])
        if union is None:
            problems.append(_describe(err, model, prefix, also_allowed or []))
        elif loc not in unions_seen:
            unions_seen.add(loc)
            key = ".".join([prefix] * bool(prefix) + [str(p) for p in loc])
            value = _lookup(data, loc, err.get("input"))
            problems.append(f"{key}: expected {_type_words(union)} (got {_shown(value)})")
    return problems


def _describe(err: ErrorDetails, model: type[BaseModel], prefix: str = "",
              also_allowed: list[str] | None = None) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(([prefix] if prefix else []) + loc)
    err_type = err["type"]
    value = err.get("input")
    if err_type == "extra_forbidden":
        siblings = _fields_at(model, err["loc"][:-1])
        if len(err["loc"]) == 1:
            siblings = (also_allowed or []) + siblings
        hint = did_you_mean(loc[-1], siblings)
        allowed = f"; allowed: {', '.join(siblings)}" if siblings and not hint else ""
        return f"{key}: unknown key{hint}{allowed}"
    if err_type == "missing":
        return f"{key}: required key is missing; add it"
    msg = err["msg"]
    if err_type == "value_error":
        msg = msg.removeprefix("Value error, ")
    hint = ""
    if err_type == "literal_error" and isinstance(value, str):
        hint = did_you_mean(value, re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", "")))
    return f"{key}: {msg} (got {_shown(value)}){hint}"


def _shown(value: Any) -> str:
    return "a table" if isinstance(value, dict) else repr(value)


def _union_at(model: type[BaseModel], loc: tuple) -> tuple[tuple, Any]:
    """Where along `loc` a field's type is a union, and that union; else (loc, None).

    Past a union, pydantic's error locations name the member it tried (`list[str]`), which
    means nothing to someone editing a recipe, so the problem is reported at the union's key.
    """
    current: Any = model
    for i, part in enumerate(loc):
        if get_origin(current) in (Union, types.UnionType) and \
                len([a for a in get_args(current) if a is not type(None)]) > 1:
            return tuple(loc[:i]), current
        fields = getattr(current, "model_fields", None) if isinstance(current, type) else None
        current = fields[part].annotation if fields and part in fields else None
    return tuple(loc), None


def _type_words(union: Any) -> str:
    words = []
    for arg in get_args(union):
        if arg is type(None):
            continue
        if get_origin(arg) is Literal:
            words += [repr(v) for v in get_args(arg)]
        else:
            words.append(arg.__name__ if isinstance(arg, type) else str(arg))
    return " or ".join(words)


def _lookup(data: Any, loc: tuple, default: Any) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return default
    return data


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    fields = getattr(current, "model_fields", {})
    return list(fields)


