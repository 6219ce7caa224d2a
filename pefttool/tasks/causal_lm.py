"""Causal language modelling: the loss is over each row's (response) tokens (CAUSAL_LM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..metrics import contains_answer, exact_match, perplexity
from .base import Metric, Task


@dataclass
class CausalLMOutputs:
    """What an evaluation pass over a causal LM gathers."""

    loss: float                            # token-weighted mean over all processes
    predictions: list[str] | None = None   # greedy answers to the eval prompts (exact_match)
    references: list[str] | None = None


def _answers(score: Any) -> Any:
    def compute(o: CausalLMOutputs) -> float | None:
        if o.predictions is None or o.references is None:
            return None
        return score(o.predictions, o.references)
    return compute


class CausalLMTask(Task):
    type = "causal-lm"
    model_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    model_noun = "a causal language model"
    default_metric = "eval_loss"
    has_labels = False
    sequence_labels = True
    metrics = {
        "eval_loss": Metric("eval_loss", lambda o: o.loss, higher_is_better=False,
                            description="mean cross-entropy per trained token"),
        "perplexity": Metric("perplexity", lambda o: perplexity(o.loss), higher_is_better=False,
                             description="exp(eval_loss)"),
        "exact_match": Metric("exact_match", _answers(exact_match), higher_is_better=True,
                              description="share of greedy answers equal to the reference",
                              share_of_rows=True),
        "contains_answer": Metric("contains_answer", _answers(contains_answer),
                                  higher_is_better=True, selectable=False,
                                  description="share of answers containing the reference",
                                  share_of_rows=True),
    }

    def data_kind(self, recipe: Any) -> str:
        return recipe.task.format

    def gradient_checkpointing_by_default(self, recipe: Any, memory_first: bool = False) -> bool:
        return memory_first  # the memory case: long sequences, a quantized base, a small GPU

    def evaluate(self, model: Any, eval_dl: Any, data: Any, recipe: Any, tokenizer: Any,
                 accelerator: Any) -> dict[str, float]:
        from ..evaluate import _generate, causal_lm_pass

        outputs = CausalLMOutputs(loss=causal_lm_pass(model, eval_dl, accelerator))
        if recipe.metric == "exact_match" and data.eval_prompts:
            outputs.predictions = _generate(model, data, recipe, tokenizer, accelerator)
            outputs.references = data.eval_answers[:len(outputs.predictions)]
        return self.score(outputs)


CAUSAL_LM = CausalLMTask()
