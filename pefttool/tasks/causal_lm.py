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
    formats = ("instruction", "text", "chat")
    packs = True
    data_keys = ("model.path", "data.train", "data.eval", "data.prompt_column", "data.response_column")
    inference_command = "generate"
    prompt_noun = "a prompt (the model replies)"
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

    def replies(self, model: Any, data: Any, recipe: Any, tokenizer: Any, accelerator: Any,
                limit: int | None = None) -> list[str]:
        return generate_answers(model, data, recipe, tokenizer, accelerator, limit=limit)

    def evaluate(self, model: Any, eval_dl: Any, data: Any, recipe: Any, tokenizer: Any,
                 accelerator: Any) -> dict[str, float]:
        outputs = CausalLMOutputs(loss=causal_lm_pass(model, eval_dl, accelerator))
        if recipe.metric == "exact_match" and data.eval_prompts:
            outputs.predictions = generate_answers(model, data, recipe, tokenizer, accelerator)
            outputs.references = data.eval_answers[:len(outputs.predictions)]
        return self.score(outputs)


def causal_lm_pass(model: Any, eval_dl: Any, accelerator: Any) -> float:
    """The mean loss per trained token, over all processes."""
    import torch

    # Token-weighted mean: the model's loss is a mean over a batch's unmasked tokens.
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    token_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for batch in eval_dl:
        out = model(**batch)
        n = (batch["labels"][:, 1:] != -100).sum()
        loss_sum += out.loss.double() * n
        token_sum += n
    loss_sum, token_sum = accelerator.reduce(loss_sum), accelerator.reduce(token_sum)
    return (loss_sum / token_sum.clamp(min=1)).item()


def generate_answers(model: Any, data: Any, recipe: Any, tokenizer: Any, accelerator: Any,
              limit: int | None = None) -> list[str]:
    """Greedy-generate an answer for each eval prompt (the first `limit` of them)."""
    unwrapped = accelerator.unwrap_model(model)
    predictions: list[str] = []
    size = recipe.eval.batch_size
    todo = data.eval_prompts[:limit] if limit is not None else data.eval_prompts
    for i in range(0, len(todo), size):
        prompts = todo[i:i + size]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                        add_special_tokens=False).to(accelerator.device)
        out = unwrapped.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=recipe.eval.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        predictions += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return predictions


CAUSAL_LM = CausalLMTask()
