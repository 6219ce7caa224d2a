"""Built-in task `causal-lm`: the loss is over each row's (response) tokens (CAUSAL_LM);
instruction pairs, plain text or chat conversations; packing.

Registered through the `pefttool_register_tasks` hook and the `pefttool` entry-point group,
like a third party's task; it uses only the public contract (`pefttool.Task`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pefttool.data.formats import ChatRows, InstructionRows, RowFormat, TextRows
from pefttool.hookspecs import hookimpl
from pefttool.metrics import contains_answer, exact_match, perplexity
from pefttool.tasks import Metric, Task


@dataclass
class CausalLMOutputs:
    """What an evaluation pass over a causal LM gathers."""

    loss: float                            # token-weighted mean over all processes
    predictions: list[str] | None = None   # greedy answers to the eval prompts (exact_match)
    references: list[str] | None = None


def _answers(score: Any) -> Any:
    def compute(o: CausalLMOutputs) -> float | None:
        """The metric from the generated answers; None when there are none."""
        if o.predictions is None or o.references is None:
            return None
        return score(o.predictions, o.references)
    return compute


# task.format → the rows it reads
FORMATS: dict[str, type[RowFormat]] = {"instruction": InstructionRows, "text": TextRows,
                                       "chat": ChatRows}


class CausalLMTask(Task):
    type = "causal-lm"
    description = "next-token loss on responses, text or chat turns: eval loss, perplexity, exact match"
    model_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    model_noun = "a causal language model"
    default_metric = "eval_loss"
    has_labels = False
    sequence_labels = True
    vocabulary_loss = True     # train.loss_chunks: the loss never makes the full logits
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

    def row_format(self, recipe: Any) -> Any:
        """Task contract: the rows task.format names (instruction, text or chat)."""
        return FORMATS[recipe.task.format].from_recipe(recipe)

    def has_prompts(self, recipe: Any) -> bool:
        """Task contract: instruction and chat rows hold prompts to reply to; text does not."""
        return recipe.task.format in ("instruction", "chat")

    def check_recipe(self, recipe: Any) -> list[str]:
        """Task contract, before anything loads: the metric, exact_match's formats, and the
        chat-only keys; one line per problem."""
        problems = super().check_recipe(recipe)
        if recipe.eval.metric == "exact_match" and not self.has_prompts(recipe):
            problems.append("eval.metric: exact_match needs task.format = \"instruction\" or \"chat\"")
        if recipe.task.labels is not None and recipe.task.format == "chat":
            problems.append("task.labels: a chat conversation's replies are free text; remove it")
        return problems + _chat_checks(recipe)

    def gradient_checkpointing_by_default(self, recipe: Any, memory_first: bool = False) -> bool:
        """Task contract: on for a memory-first strategy (QLoRA), where sequences are long."""
        return memory_first  # the memory case: long sequences, a quantized base, a small GPU

    def replies(self, model: Any, data: Any, recipe: Any, tokenizer: Any, accelerator: Any,
                limit: int | None = None) -> list[str]:
        """Task contract: greedy replies to the first `limit` held-out prompts (eval.samples)."""
        return generate_answers(model, data, recipe, tokenizer, accelerator, limit=limit)

    def evaluate(self, model: Any, eval_dl: Any, data: Any, recipe: Any, tokenizer: Any,
                 accelerator: Any) -> dict[str, float]:
        """Task contract: the token-weighted eval loss (and perplexity); exact match by
        greedy generation when eval.metric asks for it."""
        outputs = CausalLMOutputs(loss=causal_lm_pass(model, eval_dl, accelerator))
        if recipe.metric == "exact_match" and data.eval_prompts:
            outputs.predictions = generate_answers(model, data, recipe, tokenizer, accelerator)
            outputs.references = data.eval_answers[:len(outputs.predictions)]
        return self.score(outputs)


def _chat_checks(recipe: Any) -> list[str]:
    """task.format = "chat" and the keys that only it reads."""
    task, d = recipe.task, recipe.data
    problems = []
    if task.format == "chat":
        if d.chat_template is False:
            problems.append("data.chat_template: false, but task.format = \"chat\" renders "
                            "conversations with the model's chat template; set it to true (or "
                            "to a Jinja template file)")
        if d.prompt_template is not None:
            problems.append(f"data.prompt_template: {d.prompt_template!r} does not apply to "
                            f"task.format = \"chat\" (turns are rendered by the chat template); "
                            f"remove it")
        if d.response_map is not None:
            problems.append("data.response_map: does not apply to task.format = \"chat\"; "
                            "remove it")
    if d.system_prompt is not None and d.chat_template is False:
        problems.append(f"data.system_prompt: {d.system_prompt[:40]!r} goes into a chat template's "
                        f"system turn, and this recipe renders none (data.chat_template false); "
                        f"remove it")
    if task.format != "chat":
        problems += chat_only_keys(recipe)
    return problems


def chat_only_keys(recipe: Any) -> list[str]:
    """The chat-only data keys set away from their defaults (a resolved recipe in a run folder
    writes the defaults out, so only another value is a problem)."""
    d, fmt = recipe.data, recipe.task.format
    return [f"data.{key}: {getattr(d, key)!r} applies to task.format = \"chat\" only (task.format "
            f"is {fmt!r}); remove it or set task.format = \"chat\""
            for key, default in (("messages_column", None), ("train_on", "assistant"))
            if getattr(d, key) != default]


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


@hookimpl
def pefttool_register_tasks(register: Callable[[Task], None]) -> None:
    """Hook `pefttool_register_tasks` (once, at start-up): registers `causal-lm`."""
    register(CausalLMTask())
