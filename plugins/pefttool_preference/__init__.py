"""Built-in task `preference`: a causal LM tuned on preference pairs (a prompt, a chosen and a
rejected reply) with DPO, IPO, ORPO or SimPO.

Registered through the `pefttool_register_tasks` hook and the `pefttool` entry-point group,
like a third party's task; it uses only the public contract (`pefttool.Task`, its
`training_loss` and `RowFormat.collator`).

    [task]
    type = "preference"
    loss = "dpo"              # dpo | ipo | orpo | simpo
    beta = 0.1                # DPO/IPO: the KL weight; SimPO: the reward scale; ORPO: lambda
    label_smoothing = 0.0     # DPO/SimPO: conservative (noisy-label) variant
    gamma = 0.5               # SimPO: the target reward margin
    chosen_column = "chosen"
    rejected_column = "rejected"
    padding_free = false      # pack a batch's chosen and rejected rows: no padding

    [data]
    prompt_column = "prompt"  # text, or a list of messages (a conversation to continue)

Rows: `prompt` (text or messages), `chosen` and `rejected` (each a reply's text, or a whole
conversation whose last assistant turn is the reply and whose earlier turns are the prompt:
the binarized-feedback layout; then no prompt column is needed). With data.chat_template (and a
tokenizer that has one) a pair is rendered through the chat template exactly as the chat SFT
path renders a conversation (`pefttool.data.chat.Renderer`); the prompt is tokenized once, so
the chosen and rejected rows share its tokens; the loss is on the replies only. Without a
template: `prompt + newline`, the reply, EOS (as instruction rows).

The reference model (DPO, IPO) is the same model with its adapter disabled (PEFT's
`disable_adapter`): no second copy. A full fine-tune has no adapter to disable: its base is
loaded once more, frozen. ORPO and SimPO need no reference. From a finished SFT run
(`model.adapter = "runs/sft-..."`) its adapter trains further and the reference is the model
with a frozen copy of it: the SFT'd model.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from pefttool.data import chat
from pefttool.data.collate import Collator
from pefttool.data.common import IGNORE_INDEX
from pefttool.data.formats import BadRow, Row, RowFormat, cell_text
from pefttool.errors import DataError, ModelError
from pefttool.hookspecs import hookimpl
from pefttool.tasks import Metric, Task, TaskOptions

DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "orpo": 0.1, "simpo": 2.0}
NEEDS_REFERENCE = ("dpo", "ipo")


class PreferenceOptions(TaskOptions):
    loss: Literal["dpo", "ipo", "orpo", "simpo"] = Field(
        "dpo", description="dpo | ipo (a reference: the base, adapter disabled) | orpo | simpo "
                           "(no reference)")
    beta: float | None = Field(None, gt=0, description="DPO/IPO: KL weight (0.1); SimPO: reward "
                                                       "scale (2.0); ORPO: lambda (0.1)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="DPO/SimPO: the share of pairs "
                                                                  "assumed mislabelled")
    gamma: float = Field(0.5, ge=0, description="SimPO: the target reward margin")
    chosen_column: str = Field("chosen", min_length=1, description="the preferred reply's column")
    rejected_column: str = Field("rejected", min_length=1, description="the other reply's column")
    padding_free: bool = Field(False, description="pack a batch's chosen and rejected rows into "
                               "rows of up to data.max_length, each attending only to itself: no "
                               "padding (less memory and time when replies differ in length)")

    def beta_value(self) -> float:
        """task.beta, or the loss's own default (DEFAULT_BETA)."""
        return self.beta if self.beta is not None else DEFAULT_BETA[self.loss]


# ---------------------------------------------------------------------------- rows


@dataclass
class PairRow(Row):
    """A cleaned pair: `text` the rendered prompt, `label` the chosen reply's text."""

    chosen_text: str = ""     # the chosen reply as rendered (the template's end-of-turn included)
    rejected_text: str = ""


def _reply(value: Any, column: str) -> tuple[list[dict[str, str]] | None, str]:
    """A chosen/rejected cell → (the turns before the reply or None, the reply's content)."""
    if isinstance(value, (list, tuple)) or (isinstance(value, str) and value.lstrip().startswith("[{")):
        try:
            messages = chat.normalize(value)
        except chat.ChatProblem as exc:
            raise BadRow(str(exc), column) from None
        return messages[:-1], messages[-1]["content"]
    text = cell_text(value, column)
    if not text:
        raise BadRow("is empty (no reply)", column)
    return None, text


def _prompt(value: Any, column: str) -> list[dict[str, str]]:
    """A prompt cell → its turns (text is one user turn); it must end with a user turn."""
    if isinstance(value, (list, tuple)):
        try:
            messages = chat.normalize(value, need_reply=False)
        except chat.ChatProblem as exc:
            raise BadRow(str(exc), column) from None
    else:
        text = cell_text(value, column)
        if not text:
            raise BadRow("is empty (no prompt)", column)
        messages = [{"role": "user", "content": text}]
    if messages[-1]["role"] != "user":
        raise BadRow(f"ends with the {messages[-1]['role']}'s turn, not the user's turn the "
                     f"replies answer", column)
    return messages


class PairRows(RowFormat):
    """A prompt and two replies per row; the loss is on the replies."""

    target_noun = "reply"
    too_long = "every prompt is at least"
    turns = True
    sequence_names = ("chosen", "rejected")

    def __init__(self, columns: list[tuple[str, str]], prompt_column: str | None,
                 chosen: str, rejected: str, renderer: chat.Renderer | None = None,
                 templated: bool = False, pack_to: int = 0) -> None:
        super().__init__(columns)
        self.prompt_column, self.chosen, self.rejected = prompt_column, chosen, rejected
        self.renderer = renderer
        self.templated = templated
        self.pack_to = pack_to   # task.padding_free: rows of up to this many tokens (0: padded)

    @classmethod
    def from_recipe(cls, recipe: Any) -> RowFormat:
        """The prompt column (data.prompt_column) and the two replies' (task options)."""
        o = recipe.task_options
        cols = [("data.prompt_column", recipe.data.prompt_column),
                ("task.chosen_column", o.chosen_column), ("task.rejected_column", o.rejected_column)]
        return cls(cols, recipe.data.prompt_column, o.chosen_column, o.rejected_column,
                   pack_to=recipe.data.max_length if o.padding_free else 0)

    def for_columns(self, recipe: Any, src: Any, columns: list[str]) -> RowFormat:
        """A file without the prompt column takes the prompt from the conversations its
        chosen and rejected cells hold (the binarized-feedback layout)."""
        if self.prompt_column in columns:
            return self
        return PairRows(self.columns[1:], None, self.chosen, self.rejected, self.renderer, self.templated,
                        self.pack_to)

    def prepare(self, recipe: Any, tokenizer: Any) -> None:
        """With data.chat_template and a tokenizer that has one, pairs render through it."""
        self.templated = bool(recipe.data.chat_template and getattr(tokenizer, "chat_template", None))
        self.renderer = chat.Renderer(tokenizer, recipe.data.system_prompt) if self.templated else None

    def make_row(self, recipe: Any, values: dict[str, Any]) -> Row | None:
        """One cleaned, rendered pair; BadRow names what is wrong with it."""
        before_c, chosen = _reply(values[self.chosen], self.chosen)
        before_r, rejected = _reply(values[self.rejected], self.rejected)
        if self.prompt_column is not None:
            prompt = _prompt(values[self.prompt_column], self.prompt_column)
            for before, column in ((before_c, self.chosen), (before_r, self.rejected)):
                if before and before != prompt:
                    raise BadRow("holds turns before its reply that differ from the prompt's", column)
        else:
            if before_c is None or before_r is None:
                column = self.chosen if before_c is None else self.rejected
                raise BadRow(f"is a reply's text, and the file has no '{recipe.data.prompt_column}' "
                             f"column to give its prompt (set data.prompt_column, or give the "
                             f"whole conversation)", column)
            if before_c != before_r:
                raise BadRow(f"differs from '{self.rejected}' before the last reply (a pair shares "
                             f"its prompt)", self.chosen)
            prompt = _prompt(before_c, self.chosen)
        if chosen == rejected:
            raise BadRow(f"is the same reply as '{self.rejected}' (nothing to prefer)", self.chosen)
        prompt_text, chosen_text, rejected_text = self._render(prompt, chosen, rejected)
        key = json.dumps([prompt, chosen, rejected], ensure_ascii=False, separators=(",", ":"))
        return PairRow(key, prompt_text, chosen, None, chosen_text, rejected_text)

    def _render(self, prompt: list[dict[str, str]], chosen: str, rejected: str) -> tuple[str, str, str]:
        """(prompt, chosen reply, rejected reply) as text, rendered as the chat SFT path
        renders a conversation (the reply: its span, end-of-turn marker included)."""
        column = self.prompt_column or self.chosen
        if self.renderer is None:
            if len(prompt) > 1:
                raise BadRow("is a conversation of several turns, which needs a chat template "
                             "(data.chat_template = true and a chat model's tokenizer)", column)
            return prompt[0]["content"] + "\n", chosen, rejected
        texts = []
        for reply in (chosen, rejected):
            try:
                conversation = self.renderer.render([*prompt, {"role": "assistant", "content": reply}])
            except chat.ChatProblem as exc:
                raise BadRow(str(exc), column) from None
            start, end = conversation.spans[-1]
            texts.append((conversation.text[:start], conversation.text[start:end]))
        if texts[0][0] != texts[1][0]:
            raise BadRow("is rendered differently before the two replies by the chat template", column)
        return texts[0][0], texts[0][1], texts[1][1]

    def encode_columns(self, rows: list[Row], encoder: Any) -> dict[str, list]:
        """The rendered prompt and replies as columns, before tokenizing."""
        pairs = [r for r in rows if isinstance(r, PairRow)]
        return {"prompt": [r.text for r in pairs], "chosen": [r.chosen_text for r in pairs],
                "rejected": [r.rejected_text for r in pairs]}

    def tokenize(self, encoder: Any, batch: dict[str, list]) -> dict[str, list]:
        """The prompt tokenized once, each reply after it (cut to the room max_length leaves):
        chosen as input_ids/labels, rejected as rejected_input_ids/rejected_labels; labels
        -100 on the prompt. A pair whose prompt leaves no room for a reply token is dropped."""
        tok = encoder.tok
        prompts = tok(batch["prompt"], add_special_tokens=False)["input_ids"]
        chosen = tok(batch["chosen"], add_special_tokens=False)["input_ids"]
        rejected = tok(batch["rejected"], add_special_tokens=False)["input_ids"]
        end = [] if self.templated else encoder.eos   # a template's reply ends its own turn
        start = [] if self.templated else encoder.bos
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [],
                                "rejected_input_ids": [], "rejected_labels": [],
                                "_drop": [], "_truncated": []}
        limit = encoder.max_length
        for p, c, r in zip(prompts, chosen, rejected):
            p = start + list(p)
            c, r = list(c) + end, list(r) + end
            room = max(0, limit - len(p))
            drop = room == 0
            for ids_key, labels_key, reply in (("input_ids", "labels", c),
                                               ("rejected_input_ids", "rejected_labels", r)):
                out[ids_key].append([] if drop else p + reply[:room])
                out[labels_key].append([] if drop else [IGNORE_INDEX] * len(p) + reply[:room])
            out["attention_mask"].append([1] * len(out["input_ids"][-1]))
            out["_drop"].append(drop)
            out["_truncated"].append(not drop and max(len(c), len(r)) > room)
        return out

    def finish(self, encoder: Any, ds: Any, rows: list[Row], counts: dict[str, Any], split: str) -> Any:
        """Counts cut replies and dropped pairs; removes the helper columns."""
        counts["truncated"] = sum(list(ds["_truncated"]))
        counts["dropped_truncated"] = sum(list(ds["_drop"]))
        if counts["dropped_truncated"]:
            ds = ds.filter(lambda b: [not x for x in b["_drop"]], batched=True,
                           new_fingerprint=f"pefttool-{encoder.fingerprint}-{split}-pairs-kept")
        return ds.remove_columns(["_drop", "_truncated"])

    def collator(self, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """N pairs → a batch of 2N sequences (PairCollator), packed when task.padding_free."""
        return PairCollator(pad_id, self.pack_to)


@dataclass
class PairCollator:
    """N pairs → one batch of 2N rows (the N chosen, then the N rejected), padded as every
    causal-LM batch is (pefttool's `Collator`: labels -100 on padding). It pickles."""

    pad_id: int
    pack_to: int = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The chosen rows, then the rejected, through the shared collator; or packed."""
        seqs = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows] + \
               [{"input_ids": r["rejected_input_ids"], "labels": r["rejected_labels"]} for r in rows]
        if self.pack_to:
            return self.packed(seqs)
        return Collator(pad_id=self.pad_id, sequence_labels=True)(seqs)

    def packed(self, seqs: list[dict[str, Any]]) -> dict[str, Any]:
        """task.padding_free: the 2N sequences in rows of up to `pack_to` tokens (best fit,
        `pefttool.sampling.pack_rows`), position ids restarting at each one, no attention mask
        (transformers then keeps each sequence to itself, as data.packing does), the first
        label of each -100 (no token predicts the next sequence), and `pair_index`: which of
        the 2N sequences each token belongs to (-1: padding at a row's end)."""
        import torch

        from pefttool.data.collate import COUNTS_KEY
        from pefttool.sampling import pack_rows

        groups = pack_rows([len(q["input_ids"]) for q in seqs], self.pack_to, 0)
        longest = max(sum(len(seqs[k]["input_ids"]) for k in group) for group in groups)
        shape = (len(groups), longest)
        ids = torch.full(shape, self.pad_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        positions = torch.arange(longest, dtype=torch.long).repeat(len(groups), 1)
        index = torch.full(shape, -1, dtype=torch.long)
        for r, group in enumerate(sorted(groups)):
            at = 0
            for k in group:
                n = len(seqs[k]["input_ids"])
                ids[r, at:at + n] = torch.as_tensor(seqs[k]["input_ids"], dtype=torch.long)
                labels[r, at:at + n] = torch.as_tensor(seqs[k]["labels"], dtype=torch.long)
                labels[r, at] = IGNORE_INDEX
                positions[r, at:at + n] = torch.arange(n)
                index[r, at:at + n] = k
                at += n
            positions[r, at:] = torch.arange(longest - at)   # padding: a segment of its own
        real = int((index >= 0).sum())
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "pair_index": index,
                COUNTS_KEY: torch.tensor([real, len(seqs)], dtype=torch.long)}


# ---------------------------------------------------------------------------- the maths


def sequence_logps(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(summed log-probability of each row's label tokens, their number), per row.

    Only the label positions' logits are scored (a prompt's tokens need none), in float32 as
    target logit − logsumexp: on CPU, `F.cross_entropy`'s float32 log-softmax drifts by
    ~5e-5 per token over a 49k vocabulary (6.7e-3 on a 120-token reply against a float64
    reference), where logsumexp stays within ~1e-5 of it (benchmarks/dpo_vs_trl.py).
    With train.loss_chunks (the default) the model's forward goes through pefttool's chunked
    head (`pefttool.losses`), which gives these log-probabilities without the full logits."""
    import torch

    from pefttool.losses import loss_chunks_of

    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    index = batch.get("pair_index")   # task.padding_free: sequences packed into rows
    inputs = ({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]} if index is None
              else {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False})
    if index is not None:
        _check_packing(model)
    if loss_chunks_of(model):   # the chunked head: no logits
        token_logps = model(**inputs, labels=batch["labels"]).token_logps[mask]
    else:
        picked = model(**inputs).logits[:, :-1][mask].float()          # (label tokens, vocab)
        targets = labels[mask]
        token_logps = picked.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(picked, -1)
    owner = mask.nonzero()[:, 0] if index is None else index[:, 1:][mask]
    n = labels.shape[0] if index is None else int(index.max()) + 1
    sums = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device)
    counts = torch.zeros(n, dtype=torch.long, device=token_logps.device)
    return sums.index_add(0, owner, token_logps), counts.index_add(0, owner, torch.ones_like(owner))


# models checked to keep packed sequences apart (task.padding_free)
_PACKING_CHECKED: weakref.WeakSet[Any] = weakref.WeakSet()


def _check_packing(model: Any) -> None:
    """task.padding_free on a model that would attend across packed sequences: one line
    (`pefttool.data.collate.check_packed_attention`), once per model."""
    from pefttool.data.collate import check_packed_attention

    inner = getattr(model, "module", model)
    if inner in _PACKING_CHECKED:
        return
    try:
        check_packed_attention(inner)
    except ModelError as exc:
        raise ModelError(str(exc).replace("data.packing", "task.padding_free")) from None
    _PACKING_CHECKED.add(inner)


# A full fine-tune's reference: its base model, loaded once more, frozen (by the policy model).
_FROZEN: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def frozen_reference(inner: Any, recipe: Any) -> Any:
    """The base model of `recipe` loaded again, frozen, in eval mode, beside the policy model
    `inner` (on its device; the chunked loss as the run has it). Loaded from `model.path`, not
    copied from the policy, so a resumed run's reference is the base too, not its checkpoint."""
    reference = _FROZEN.get(inner)
    if reference is None:
        from pefttool.losses import loss_chunks_of, set_loss_chunks
        from pefttool.models import load_model
        from pefttool.settled import settle

        run = settle(recipe, check=False)
        reference = load_model(recipe, run.strategy, run.options)
        reference.to(next(inner.parameters()).device).eval().requires_grad_(False)
        if loss_chunks_of(inner):
            set_loss_chunks(reference, loss_chunks_of(inner))
        _FROZEN[inner] = reference
    return reference


def reference_logps(model: Any, batch: dict[str, Any], loss: str, recipe: Any = None) -> tuple[Any, Any]:
    """The reference model's `sequence_logps`: the same model with its adapter disabled, or,
    when the run continues an adapter (`model.adapter`: an SFT run), with the frozen copy of
    that adapter (pefttool.adapters.REFERENCE_ADAPTER): the SFT'd model, as DPO expects. A
    model without adapters (full fine-tuning): its base loaded again, frozen (`recipe`)."""
    import torch

    from pefttool.adapters import REFERENCE_ADAPTER

    inner = getattr(model, "module", model)   # (a DistributedDataParallel wrapper)
    if REFERENCE_ADAPTER in getattr(inner, "peft_config", {}):
        active = inner.active_adapter
        try:
            with torch.no_grad():
                inner.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
                return sequence_logps(inner, batch)
        finally:
            inner.set_adapter(active)   # (trainable again; the reference frozen again)
    disable = getattr(inner, "disable_adapter", None)
    if disable is None and recipe is not None:
        with torch.no_grad():
            return sequence_logps(frozen_reference(inner, recipe), batch)
    if disable is None:
        raise ModelError(f"task.loss = \"{loss}\" compares the model with its reference, the base "
                         f"model with the adapter disabled, and this strategy trains no adapter; "
                         f"use an adapter strategy, or task.loss = \"orpo\" or \"simpo\" (no "
                         f"reference)")
    with torch.no_grad(), disable():
        return sequence_logps(inner, batch)


@dataclass
class PairScores:
    """Per-pair figures of one batch (tensors of N)."""

    losses: Any              # the loss each pair contributes
    chosen_rewards: Any
    rejected_rewards: Any
    chosen_logps: Any        # the policy's summed log-probabilities
    rejected_logps: Any


def pair_scores(options: PreferenceOptions, policy: tuple[Any, Any],
                reference: tuple[Any, Any] | None) -> tuple[PairScores, Any]:
    """(per-pair scores, the batch's loss) for the first half of the rows (chosen) against
    the second (rejected). The formulas are TRL's (DPOTrainer's sigmoid and ipo losses,
    CPOTrainer's simpo, ORPOTrainer's odds ratio)."""
    import torch
    import torch.nn.functional as F

    logps, counts = policy
    n = logps.shape[0] // 2
    counts = counts.clamp(min=1)
    average = logps / counts
    beta, smooth, loss = options.beta_value(), options.label_smoothing, options.loss
    if loss in NEEDS_REFERENCE:
        assert reference is not None, "dpo and ipo need the reference's log-probabilities"
        ref_logps, ref_counts = reference
        if loss == "ipo":   # IPO compares per-token averages
            pol, ref = average, ref_logps / ref_counts.clamp(min=1)
        else:
            pol, ref = logps, ref_logps
        chosen_ratio, rejected_ratio = pol[:n] - ref[:n], pol[n:] - ref[n:]
        logits = chosen_ratio - rejected_ratio
        if loss == "ipo":
            losses = (logits - 1 / (2 * beta)) ** 2
        else:
            losses = -F.logsigmoid(beta * logits) * (1 - smooth) - F.logsigmoid(-beta * logits) * smooth
        chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
        batch_loss = losses.mean()
    elif loss == "simpo":
        logits = beta * (average[:n] - average[n:]) - options.gamma
        losses = -F.logsigmoid(logits) * (1 - smooth) - F.logsigmoid(-logits) * smooth
        chosen_rewards, rejected_rewards = beta * average[:n].detach(), beta * average[n:].detach()
        batch_loss = losses.mean()
    else:  # orpo: NLL on the chosen replies minus lambda × log-sigmoid of the log odds ratio
        chosen, rejected = average[:n], average[n:]
        log_odds = (chosen - rejected) - (torch.log(-torch.expm1(chosen.clamp(max=-1e-7)))
                                          - torch.log(-torch.expm1(rejected.clamp(max=-1e-7))))
        ratio = F.logsigmoid(log_odds)
        nll = -logps[:n].sum() / counts[:n].sum()
        losses = -chosen - beta * ratio
        chosen_rewards, rejected_rewards = beta * chosen.detach(), beta * rejected.detach()
        batch_loss = nll - beta * ratio.mean()
    scores = PairScores(losses.detach(), chosen_rewards, rejected_rewards,
                        logps[:n].detach(), logps[n:].detach())
    return scores, batch_loss


def score_batch(model: Any, batch: dict[str, Any], options: PreferenceOptions,
                recipe: Any = None) -> tuple[PairScores, Any]:
    """One batch of pairs through the model (and its reference when the loss has one;
    `recipe` lets a full fine-tune load its frozen base as the reference)."""
    policy = sequence_logps(model, batch)
    reference = (reference_logps(model, batch, options.loss, recipe) if options.loss in NEEDS_REFERENCE
                 else None)
    return pair_scores(options, policy, reference)


# ---------------------------------------------------------------------------- the task


@dataclass
class PreferenceOutputs:
    """Means over the held-out pairs (all processes)."""

    loss: float
    reward_accuracy: float
    reward_margin: float
    logps_chosen: float
    logps_rejected: float


class PreferenceTask(Task):
    Options = PreferenceOptions
    type = "preference"
    description = ("preference pairs (prompt, chosen, rejected) with DPO, IPO, ORPO or SimPO: "
                   "reward accuracy and margin")
    model_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    model_noun = "a causal language model"
    default_metric = "reward_accuracy"
    has_labels = False
    sequence_labels = True
    vocabulary_loss = True     # train.loss_chunks: log-probabilities without the full logits
    data_keys = ("model.path", "data.train", "data.eval", "data.prompt_column")
    inference_command = "generate"
    prompt_noun = "a prompt (the model replies)"
    rows_per_example = 2   # a batch of N pairs is 2N rows
    metrics = {
        "reward_accuracy": Metric("reward_accuracy", lambda o: o.reward_accuracy, higher_is_better=True,
                                  description="share of pairs whose chosen reply earns the higher "
                                              "reward (a tie counts half)", share_of_rows=True),
        "reward_margin": Metric("reward_margin", lambda o: o.reward_margin, higher_is_better=True,
                                description="mean chosen reward minus rejected reward"),
        "eval_loss": Metric("eval_loss", lambda o: o.loss, higher_is_better=False,
                            description="the preference loss (task.loss) on held-out pairs"),
        "logps_chosen": Metric("logps_chosen", lambda o: o.logps_chosen, higher_is_better=True,
                               description="mean log-probability of the chosen replies"),
        "logps_rejected": Metric("logps_rejected", lambda o: o.logps_rejected, higher_is_better=False,
                                 selectable=False,
                                 description="mean log-probability of the rejected replies"),
    }

    def row_format(self, recipe: Any) -> RowFormat:
        """Task contract: prompt, chosen and rejected columns."""
        return PairRows.from_recipe(recipe)

    def check_recipe(self, recipe: Any) -> list[str]:
        """Task contract, before anything loads: the base checks, no label set, and the
        chosen/rejected columns are two."""
        problems = super().check_recipe(recipe)
        options = recipe.task_options
        if recipe.task.labels is not None:
            problems.append("task.labels: preference pairs have no label set; remove it")
        if options.chosen_column == options.rejected_column:
            problems.append(f"task.rejected_column: '{options.rejected_column}' is also "
                            f"task.chosen_column; name the two replies' columns")
        if options.label_smoothing and options.loss not in ("dpo", "simpo"):
            problems.append(f"task.label_smoothing: applies to task.loss = \"dpo\" or \"simpo\", "
                            f"not \"{options.loss}\"; remove it")
        return problems

    def example_labels(self, input_ids: Any) -> Any:
        """Task contract (`pefttool plan`): a batch of rows with their loss on every token."""
        return input_ids

    def frozen_models(self, recipe: Any, trains_everything: bool) -> int:
        """Task contract (`pefttool plan`): DPO/IPO under full fine-tuning keep the base again,
        frozen, as the reference (`frozen_reference`)."""
        return 1 if trains_everything and recipe.task_options.loss in NEEDS_REFERENCE else 0

    def gradient_checkpointing_by_default(self, recipe: Any, memory_first: bool = False) -> bool:
        """Task contract: as causal-LM runs, on for a memory-first strategy."""
        return memory_first

    def training_loss(self, model: Any, batch: dict[str, Any], recipe: Any) -> Any:
        """Task contract: the preference loss of a micro-batch of pairs (one forward pass over
        the chosen and rejected rows together; a no-grad one with the adapter disabled for
        the reference, or the frozen base of a full fine-tune)."""
        return score_batch(model, batch, recipe.task_options, recipe)[1]

    def evaluate(self, model: Any, eval_dl: Any, data: Any, recipe: Any, tokenizer: Any,
                 accelerator: Any) -> dict[str, float]:
        """Task contract: the held-out pairs' loss, reward accuracy and margin, log-probs."""
        import torch

        sums = torch.zeros(6, dtype=torch.float64, device=accelerator.device)
        for batch in eval_dl:
            scores, _ = score_batch(model, batch, recipe.task_options, recipe)
            won = (scores.chosen_rewards > scores.rejected_rewards).double() \
                + 0.5 * (scores.chosen_rewards == scores.rejected_rewards).double()
            sums += torch.stack([scores.losses.double().sum(), won.sum(),
                                 (scores.chosen_rewards - scores.rejected_rewards).double().sum(),
                                 scores.chosen_logps.double().sum(), scores.rejected_logps.double().sum(),
                                 torch.tensor(float(won.numel()), dtype=torch.float64,
                                              device=sums.device)])
        sums = accelerator.reduce(sums, reduction="sum")
        pairs = float(sums[5].clamp(min=1))
        return self.score(PreferenceOutputs(*(float(v) / pairs for v in sums[:5])))

    def check_data(self, recipe: Any, data: Any) -> None:
        """Task contract: pairs must be left to train on."""
        if len(data.train) == 0:
            raise DataError("data.train: no preference pairs left after cleaning")


@hookimpl
def pefttool_register_tasks(register: Callable[[Task], None]) -> None:
    """Hook `pefttool_register_tasks` (once, at start-up): registers `preference`."""
    register(PreferenceTask())
