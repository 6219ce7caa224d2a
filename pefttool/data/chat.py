"""Chat rows: `messages` (OpenAI style) or ShareGPT `conversations` → one conversation rendered
through the tokenizer's chat template, with the character spans of its assistant turns.

The spans are found the way TRL does when a template has no ``{% generation %}`` markers
(SmolLM2's, like most, has none, so ``return_assistant_tokens_mask`` cannot be used): render
the conversation up to each assistant turn with ``add_generation_prompt=True`` (where the
assistant's reply starts) and up to and including that turn (where it ends, end-of-turn token
included). Each rendering must be a prefix of the whole conversation's rendering; a template
that rewrites earlier turns (e.g. drops past reasoning) is reported, not guessed around.
Token positions follow from the tokenizer's character offsets (`encoding.py`).

Problems with one conversation raise `_BadRow` (named by file and line by the cleaning stage,
then stopped on or skipped like any bad row): not a list of messages, a message without a
role or text, a role outside system/user/assistant (ShareGPT: human/gpt/system), an empty
turn, a last turn that is not the assistant's, a turn the template fails on or leaves out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import one_line

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system",
                  "user": "user", "assistant": "assistant"}
MESSAGES_COLUMNS = ("messages", "conversations")  # auto-detected, in this order


class ChatProblem(ValueError):
    """One conversation cannot be used; the message says which turn and why."""


@dataclass
class Conversation:
    """A rendered conversation: `text` as the template writes it, `spans` the [start, end)
    character ranges of each assistant turn (reply and end-of-turn marker), `prompt` the
    text before the last assistant turn with the generation prompt (what a model is given to
    write that reply), `answer` the last assistant turn's content."""

    text: str
    spans: list[tuple[int, int]]
    prompt: str
    answer: str


def pick_column(configured: str | None, columns: list[str]) -> str | None:
    """`data.messages_column`, or the first of messages/conversations the file has."""
    if configured is not None:
        return configured if configured in columns else None
    return next((c for c in MESSAGES_COLUMNS if c in columns), None)


def normalize(value: Any, need_reply: bool = True) -> list[dict[str, str]]:
    """A cell → [{"role", "content"}, ...]; raises ChatProblem naming the turn. `need_reply`:
    it must end with an assistant turn (training data; a prompt to answer need not)."""
    if isinstance(value, str):  # a CSV cell holding JSON
        try:
            value = json.loads(value)
        except ValueError:
            raise ChatProblem("is text, not a list of messages") from None
    if value is None:
        raise ChatProblem("is null (no messages)")
    if not isinstance(value, (list, tuple)):
        raise ChatProblem(f"is a {type(value).__name__}, not a list of messages")
    if not value:
        raise ChatProblem("has no messages")
    out: list[dict[str, str]] = []
    for n, msg in enumerate(value, 1):
        if not isinstance(msg, dict):
            raise ChatProblem(f"message {n} is a {type(msg).__name__}, not an object with "
                              "role/content (or from/value)")
        if msg.get("role") is not None or msg.get("content") is not None:
            role, content, role_key = msg.get("role"), msg.get("content"), "role"
            allowed = {r: r for r in ROLES}
        elif msg.get("from") is not None or msg.get("value") is not None:
            role, content, role_key = msg.get("from"), msg.get("value"), "from"
            allowed = SHAREGPT_ROLES
        else:
            raise ChatProblem(f"message {n} has neither role/content nor from/value")
        if not isinstance(role, str):
            raise ChatProblem(f"message {n} has no {role_key}")
        if role not in allowed:
            names = "system, user, assistant" if role_key == "role" else "human, gpt, system"
            raise ChatProblem(f"message {n} has {role_key} {role!r}, which the chat template "
                              f"does not know (use {names})")
        if content is None:
            raise ChatProblem(f"message {n} ({allowed[role]}) has no content")
        if not isinstance(content, str):
            raise ChatProblem(f"message {n} ({allowed[role]}) content is a "
                              f"{type(content).__name__}, not text")
        content = content.strip()
        if not content:
            raise ChatProblem(f"message {n} ({allowed[role]}) is empty")
        out.append({"role": allowed[role], "content": content})
    if need_reply and out[-1]["role"] != "assistant":
        raise ChatProblem(f"ends with a {out[-1]['role']} turn (message {len(out)}), not an "
                          "assistant turn; a conversation must end with the reply to learn")
    return out


def key(messages: list[dict[str, str]]) -> str:
    """What duplicate conversations are judged by."""
    return json.dumps(messages, ensure_ascii=False, separators=(",", ":"))


def with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation as a recipe renders it: `data.system_prompt` (when set) as its system
    turn, unless it has its own. The one place training, inspect and generate add it."""
    if system_prompt is None or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


class Renderer:
    """Renders conversations with one tokenizer's chat template (and the recipe's system turn)."""

    def __init__(self, tokenizer: Any, system_prompt: str | None = None):
        self.tok = tokenizer
        self.system_prompt = system_prompt

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            out = self.tok.apply_chat_template(messages, tokenize=False,
                                               add_generation_prompt=generation_prompt)
        except Exception as exc:  # jinja's raise_exception, a template bug: this row's problem
            raise ChatProblem(f"the chat template cannot render it ({type(exc).__name__}: "
                              f"{one_line(exc)})") from None
        return out if isinstance(out, str) else str(out)

    def render(self, messages: list[dict[str, str]]) -> Conversation:
        messages = with_system(messages, self.system_prompt)
        text = self._render(messages, False)
        pos = 0
        for n, msg in enumerate(messages, 1):  # every turn must reach the text, in order
            at = text.find(msg["content"], pos)
            if at < 0:
                raise ChatProblem(f"message {n} ({msg['role']}) is left out by the chat "
                                  "template (it does not render this role here)")
            pos = at + len(msg["content"])
        spans: list[tuple[int, int]] = []
        prompt = ""
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            before = self._render(messages[:i], True)
            through = self._render(messages[: i + 1], False)
            if not text.startswith(before) or not text.startswith(through) \
                    or len(through) <= len(before):
                raise ChatProblem(f"the chat template renders message {i + 1} differently once "
                                  "later turns follow, so its tokens cannot be told apart; use a "
                                  "template that renders each turn the same whatever follows")
            spans.append((len(before), len(through)))
            prompt = before
        return Conversation(text, spans, prompt, messages[-1]["content"])
