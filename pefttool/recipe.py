"""TOML recipe → typed, validated `Recipe`.

Validation happens before anything heavy loads and reports every problem at once, each as
`key.path: what is wrong (got VALUE); what is allowed / the fix`. A strategy's options are
checked by the pydantic model the strategy itself declares, so a plugin's options are as
strict as the built-ins'.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import RecipeError
from .locations import LocationError, looks_like_hub_id, resolve

if TYPE_CHECKING:
    from .plugins import PluginHost


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class ModelSection(Section):
    path: str = Field(description="local folder, package:NAME/inner/path, or hub id org/name")
    gguf_file: str | None = Field(None, description="a .gguf file inside `path` to load from")
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = Field(False, description="allow pickle-based .bin weights (unsafe)")


class TaskSection(Section):
    type: Literal["classification", "causal-lm"]
    labels: list[str] | None = Field(None, description="classification: the label set, in id order")
    format: Literal["instruction", "text"] = Field(
        "instruction", description="causal-lm: prompt/response pairs, or plain text"
    )

    @model_validator(mode="after")
    def _labels_fit_task(self) -> TaskSection:
        if self.type == "classification" and self.labels is not None:
            if len(self.labels) < 2:
                raise ValueError("labels: a classification task needs at least 2 labels")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels: each label must appear once")
        return self


class DataSection(Section):
    train: str
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
    chat_template: bool = Field(True, description="causal-lm: render through the model's chat template")
    max_length: int = Field(128, ge=8, le=32768)
    max_train_rows: int | None = Field(None, ge=1)
    max_eval_rows: int | None = Field(None, ge=1)
    drop_duplicates: bool = True
    on_bad_rows: Literal["error", "skip"] = "error"
    seed: int = 42


class MethodSection(BaseModel):
    """`strategy` plus that strategy's own options, validated by the strategy's schema."""

    model_config = ConfigDict(extra="allow", strict=True)
    strategy: str = "lora"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainSection(Section):
    epochs: int = Field(3, ge=1, le=1000)
    max_steps: int = Field(0, ge=0, description="stop after this many optimizer steps (0: no cap)")
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = Field(1.0, ge=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 42
    threads: int = Field(0, ge=0, description="torch threads on CPU (0: all cores)")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps (0: epoch ends)")
    keep_checkpoints: int = Field(2, ge=1)
    on_nan: Literal["stop", "skip"] = "stop"


Metric = Literal["accuracy", "macro_f1", "eval_loss", "perplexity", "exact_match"]
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
CAUSAL_LM_METRICS = ("eval_loss", "perplexity", "exact_match")


class EvalSection(Section):
    every_steps: int = Field(0, ge=0, description="0: evaluate at each epoch end")
    metric: Metric | None = None
    batch_size: int = Field(64, ge=1)
    before_training: bool = True
    max_new_tokens: int = Field(8, ge=1, le=512)


class EarlyStoppingSection(Section):
    enabled: bool = True
    patience: int = Field(2, ge=1)
    min_delta: float = Field(0.0, ge=0)


class OutputSection(Section):
    dir: str = "runs/{name}"
    overwrite: bool = False


class Recipe(Section):
    name: str = ""
    description: str = ""
    model: ModelSection
    task: TaskSection
    data: DataSection
    method: MethodSection = MethodSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    early_stopping: EarlyStoppingSection = EarlyStoppingSection()
    output: OutputSection = OutputSection()

    # Set by `validate_recipe`, never by the TOML: where relative paths are resolved from,
    # where the recipe came from, and the strategy's validated options.
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr("<recipe>")
    _strategy_options: BaseModel | None = PrivateAttr(None)

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
    def metric(self) -> str:
        if self.eval.metric:
            return self.eval.metric
        return "accuracy" if self.task.type == "classification" else "eval_loss"

    @property
    def higher_is_better(self) -> bool:
        return self.metric in ("accuracy", "macro_f1", "exact_match")

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
        return data


# ---------------------------------------------------------------- loading and overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=2e-4` → (['train', 'lr'], 2e-4). The value is read as TOML, else as a string."""
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


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), ["file not found; check the path (pefttool recipes lists them)"])
    except IsADirectoryError:
        raise RecipeError(str(path), ["is a directory, not a recipe file"])
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [f"not UTF-8 text (byte {exc.start}); save it as UTF-8"])
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read: {exc.strerror}"])
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [f"not valid TOML: {exc}"])


def load_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    plugins: PluginHost | None = None,
    check_files: bool = True,
) -> Recipe:
    """Read, override and validate a recipe; raise `RecipeError` listing every problem."""
    path = Path(path)
    data = apply_overrides(read_toml(path), overrides or [])
    data.setdefault("name", path.stem)
    return validate_recipe(data, source=str(path), base_dir=path.parent.resolve(),
                           plugins=plugins, check_files=check_files)


def validate_recipe(
    data: dict[str, Any],
    source: str = "<recipe>",
    base_dir: Path | None = None,
    plugins: PluginHost | None = None,
    check_files: bool = True,
) -> Recipe:
    """Validate plain data as a recipe; every problem is collected before raising."""
    if plugins is None:
        from .plugins import get_plugin_host

        plugins = get_plugin_host()
    problems: list[str] = []
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems += [_describe(err, Recipe) for err in exc.errors()]

    method = data.get("method", {}) if isinstance(data.get("method", {}), dict) else {}
    strategy_name = method.get("strategy", "lora")
    options_model = None
    if isinstance(strategy_name, str):
        strategy = plugins.strategies.get(strategy_name)
        if strategy is None:
            known = sorted(plugins.strategies)
            hint = _did_you_mean(strategy_name, known)
            problems.append(
                f"method.strategy: no strategy named '{strategy_name}'{hint}; installed: "
                f"{', '.join(known) or 'none'} (pefttool plugins lists them)"
            )
        else:
            opts = {k: v for k, v in method.items() if k != "strategy"}
            try:
                options_model = strategy.Options.model_validate(opts, strict=True)
            except ValidationError as exc:
                problems += [_describe(err, strategy.Options, prefix="method") for err in exc.errors()]

    if recipe is not None:
        recipe._base_dir = base_dir or Path.cwd()
        problems += _cross_checks(recipe, check_files)
    if problems:
        raise RecipeError(source, problems)
    assert recipe is not None
    recipe._base_dir = base_dir or Path.cwd()
    recipe._source = source
    recipe._strategy_options = options_model
    return recipe


def _cross_checks(recipe: Recipe, check_files: bool) -> list[str]:
    """Problems that involve more than one key, or the filesystem."""
    problems = []
    task = recipe.task.type
    allowed = CLASSIFICATION_METRICS if task == "classification" else CAUSAL_LM_METRICS
    if recipe.eval.metric and recipe.eval.metric not in allowed:
        problems.append(f"eval.metric: '{recipe.eval.metric}' does not fit task '{task}'; "
                        f"use one of {', '.join(allowed)}")
    if recipe.eval.metric == "exact_match" and recipe.task.format != "instruction":
        problems.append("eval.metric: exact_match needs task.format = \"instruction\"")
    if recipe.train.mixed_precision == "fp16" and not _cuda_available():
        problems.append("train.mixed_precision: 'fp16' is unusable without a GPU (one matmul takes "
                        "tens of seconds on CPU); use \"bf16\" or \"no\"")
    if recipe.train.device == "cuda" and not _cuda_available():
        problems.append("train.device: 'cuda' but no GPU is visible; use \"auto\" or \"cpu\"")
    if check_files:
        for key, loc in (("model.path", recipe.model.path), ("data.train", recipe.data.train),
                         ("data.eval", recipe.data.eval)):
            if loc is None:
                continue
            try:
                path = recipe.resolve_path(loc)
            except LocationError as exc:
                problems.append(f"{key}: {exc}")
                continue
            if key == "model.path" and not path.exists() and looks_like_hub_id(loc):
                continue  # a hub id: resolved at load time
            if not path.exists():
                problems.append(f"{key}: '{loc}' does not exist (looked at {path}); fix the path")
            elif key == "model.path" and recipe.model.gguf_file and not (path / recipe.model.gguf_file).is_file():
                problems.append(f"model.gguf_file: '{recipe.model.gguf_file}' is not a file in {path}")
            elif key.startswith("data.") and path.is_dir():
                problems.append(f"{key}: '{loc}' is a directory; name a CSV, JSONL or Parquet file")
    return problems


def _cuda_available() -> bool:
    # Only asked when the recipe wants a GPU, so `validate` stays fast on the common path.
    import torch

    return torch.cuda.is_available()


def _describe(err: dict[str, Any], model: type[BaseModel], prefix: str = "") -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(([prefix] if prefix else []) + loc)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        siblings = _fields_at(model, err["loc"][:-1])
        hint = _did_you_mean(loc[-1], siblings)
        allowed = f"; allowed: {', '.join(siblings)}" if siblings and not hint else ""
        return f"{key}: unknown key{hint}{allowed}"
    if kind == "missing":
        return f"{key}: required key is missing; add it"
    shown = repr(value) if not isinstance(value, dict) else "a table"
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{key}: {msg} (got {shown})"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    fields = getattr(current, "model_fields", {})
    return list(fields)


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
