"""The task contract: model class, PEFT task type, evaluation, metric table.

A plugin registers a `Task` through the `pefttool_register_tasks` hook; the built-in tasks
(`plugins/pefttool_classification`, `plugins/pefttool_causal_lm`) do exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict


class TaskOptions(BaseModel):
    """Base for a task's options: the recipe's `[task]` keys other than `type`, `labels` and
    `format` (which every task reads the same way)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Metric:
    """One row of a task's metric table."""

    name: str
    # From the task's evaluation outputs to the figure; None when it does not apply to this
    # evaluation (AUROC of a 3-class task, exact match without generated answers).
    compute: Callable[[Any], float | None]
    higher_is_better: bool
    selectable: bool = True  # may be eval.metric; else only reported beside it
    description: str = ""
    # A share of rows (accuracy, exact match): it moves in steps of 1/rows, so a small eval
    # set makes it coarse. A loss or a ranking score is continuous.
    share_of_rows: bool = False


class Prediction(NamedTuple):
    """What `pefttool predict` answers for one text."""

    answer: str                  # shown first: the label, or the number a regression head gives
    scores: dict[str, float]     # each label's probability ({} when the answer is not a label)


class Task:
    """What one `task.type` means. Subclasses fill in the class attributes and `evaluate`."""

    # (before `type`, which shadows the builtin in the class body)
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    type: ClassVar[str] = ""          # the recipe's task.type
    description: ClassVar[str] = ""   # one line for `pefttool plugins`
    #: set by the plugin host: the plugin that registered it
    plugin: str = ""
    model_class: ClassVar[str]        # the transformers Auto class that loads its model
    peft_task_type: ClassVar[str]     # the peft.TaskType member adapters are built for
    model_noun: ClassVar[str]         # how errors name the model ("a classifier")
    default_metric: ClassVar[str]     # eval.metric when the recipe leaves it unset
    has_labels: ClassVar[bool]        # one label per row, from a label set (a classifier head)
    sequence_labels: ClassVar[bool]   # the loss is over each row's tokens (batches need padding)
    metrics: ClassVar[dict[str, Metric]]
    # task.format values it reads (the first is the default); () when it has no formats.
    formats: ClassVar[tuple[str, ...]] = ()
    packs: ClassVar[bool] = False     # data.packing may join its examples into full rows
    # The recipe keys naming the model, the data files and the columns it reads (the TUI's form).
    data_keys: ClassVar[tuple[str, ...]] = ("model.path", "data.train", "data.eval")
    # What a finished run of it answers with: the command, and what the user types to it.
    # Sequences the collator makes of one example (a preference pair: chosen and rejected):
    # `pefttool plan` multiplies the batch by it.
    rows_per_example: ClassVar[int] = 1
    # The loss is a next-token loss over the model's vocabulary, its batches carry per-token
    # `labels`, and the model's forward with labels may go through pefttool's chunked head
    # (`pefttool.losses`): train.loss_chunks applies.
    vocabulary_loss: ClassVar[bool] = False
    inference_command: ClassVar[str] = "predict"   # "predict" (labels) | "generate" (text)
    prompt_noun: ClassVar[str] = "a text"

    def auto_model_class(self) -> Any:
        import transformers

        return getattr(transformers, self.model_class)

    def peft_type(self) -> Any:
        """The `peft.TaskType` of this task's adapters (SEQ_CLS trains and saves a new head)."""
        from ..quiet import quiet_bitsandbytes_import

        with quiet_bitsandbytes_import():
            from peft import TaskType

        return TaskType[self.peft_task_type]

    def row_format(self, recipe: Any) -> Any:
        """The rows this task reads for the recipe: a `pefttool.data.formats.RowFormat` (one of
        the built-in LabelledRows, TextRows, InstructionRows, ChatRows, or the task's own),
        which checks, cleans and encodes them."""
        raise NotImplementedError

    def model_kwargs(self, recipe: Any) -> dict[str, Any]:
        """Extra keyword arguments for the model's `from_pretrained` (a regression head:
        num_labels=1, problem_type="regression"). Default: none."""
        return {}

    def example_labels(self, input_ids: Any) -> Any:
        """Labels shaped as training's for a batch of input ids (`pefttool plan` measures a
        step with them, on the meta device). Default: the ids (a loss over every token)."""
        return input_ids

    def training_loss(self, model: Any, batch: dict[str, Any], recipe: Any) -> Any:
        """The loss of one training micro-batch, when the task computes it itself: a scalar
        tensor with grad (a preference loss runs the model over both replies, a task with its
        own head weighting...). `batch` is what the row format's collator made, after the
        strategy's `prepare_batch`. Default None: the engine runs `model(**batch)` and takes
        the strategy's `compute_loss`, else the model's own `outputs.loss`."""
        return None

    def frozen_models(self, recipe: Any, trains_everything: bool) -> int:
        """Copies of the base model's weights the task keeps beside the one that trains (a
        preference run's frozen reference under full fine-tuning, `trains_everything`):
        `pefttool plan` counts their weights. Default 0."""
        return 0

    def has_prompts(self, recipe: Any) -> bool:
        """Whether the recipe's held-out rows are prompts the model can reply to (eval.samples,
        `replies`). Default: no."""
        return False

    def gradient_checkpointing_by_default(self, recipe: Any, memory_first: bool = False) -> bool:
        """Whether train.gradient_checkpointing, left unset, is on; `memory_first`: the
        strategy exists to fit a big model in little memory (`Strategy.memory_first`)."""
        return False

    def contract_problem(self) -> str | None:
        """What the plugin host refuses a task for: a required attribute left unset, a default
        metric its own table cannot give. None when the task is whole."""
        for attr in ("model_class", "peft_task_type", "model_noun", "default_metric",
                     "has_labels", "sequence_labels", "metrics"):
            if not hasattr(self, attr):
                return f"it sets no `{attr}` (see pefttool.Task)"
        if not isinstance(self.Options, type) or not issubclass(self.Options, TaskOptions):
            return "its `Options` is not a pefttool.TaskOptions subclass"
        if self.default_metric not in self.selectable_metrics():
            return (f"its default_metric '{self.default_metric}' is not a selectable metric of its "
                    f"table ({', '.join(self.selectable_metrics()) or 'none'})")
        return None

    def selectable_metrics(self) -> tuple[str, ...]:
        return tuple(name for name, m in self.metrics.items() if m.selectable)

    def higher_is_better(self, metric: str) -> bool:
        return self.metrics[metric].higher_is_better

    def check_recipe(self, recipe: Any) -> list[str]:
        """Problems of the recipe for this task, one line each naming the key (validation
        reports them all, before anything loads). The default checks eval.metric against the
        metric table; override to add the task's own (and call super())."""
        allowed = self.selectable_metrics()
        metric = recipe.eval.metric
        problems = []
        if metric and metric not in allowed:
            problems.append(f"eval.metric: '{metric}' does not fit task '{self.type}'; use one of "
                            f"{', '.join(allowed)}")
        if recipe.train.loss_chunks and not self.vocabulary_loss:
            problems.append(f"train.loss_chunks: {recipe.train.loss_chunks} chunks a loss over a "
                            f"vocabulary, and task '{self.type}' has none; remove it")
        return problems

    def check_data(self, recipe: Any, data: Any) -> None:
        """Raise a DataError when the prepared data cannot give the recipe's metric."""

    def score(self, outputs: Any) -> dict[str, float]:
        """Every metric of the table that applies to these evaluation outputs."""
        values = {name: m.compute(outputs) for name, m in self.metrics.items()}
        return {name: float(v) for name, v in values.items() if v is not None}

    def replies(self, model: Any, data: Any, recipe: Any, tokenizer: Any, accelerator: Any,
                limit: int | None = None) -> list[str]:
        """The model's greedy replies to the first `limit` held-out prompts (eval.samples);
        a task that writes no text has none (validation refuses eval.samples for it)."""
        return []

    def predictions(self, logits: Any, labels: list[str], recipe: Any) -> list[Prediction]:
        """`pefttool predict` (and the TUI's Try it), for a task whose inference_command is
        "predict": one batch's logits (rows × outputs, float32) → one `Prediction` per row;
        `labels`: the run's label names in id order ([] when it has none); `recipe`: the
        run's (its `task_options`)."""
        raise NotImplementedError(f"task '{self.type}' answers through pefttool "
                                  f"{self.inference_command}, not predict")

    def prediction_fields(self, prediction: Prediction) -> dict[str, Any]:
        """The fields `pefttool predict --json` prints beside "text". Default: the label and
        every label's probability."""
        return {"label": prediction.answer, "probabilities": prediction.scores}

    def evaluate(self, model: Any, eval_dl: Any, data: Any, recipe: Any, tokenizer: Any,
                 accelerator: Any) -> dict[str, float]:
        """One pass over the eval split (model in eval mode, no grad); every metric that applies."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task {self.type}>"
