"""Replies from a finished causal-LM run: one prompt, or a conversation.

    generate(loaded, "Is this review positive? a lovely film")            -> "positive"
    generate(loaded, [{"role": "user", "content": "hi"}], greedy=True)     -> the next reply
    generate(loaded, prompt, on_text=print_piece, stop=threading.Event())  # streamed, stoppable

`loaded` is what `pefttool.trained.load_trained` returns. A prompt is rendered exactly as
training rendered it (the chat template when the recipe used one, else the prompt and a
newline), so the model sees the shape it learned. A list of messages goes through the
tokenizer's chat template (multi-turn); without one, the turns are joined the same plain way.
The CLI (`pefttool generate`) and the TUI's "Try it" screen both call `generate`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import OutputError
from .tasks import check_command, get_task

Messages = list[dict[str, str]]


@dataclass
class GenerationOptions:
    """Sampling settings; the defaults are the CLI's."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    greedy: bool = False           # always the likeliest token (temperature/top_p unused)
    seed: int | None = None        # a fixed seed: the same prompt gives the same reply
    system: str | None = None      # the system turn (chat template); None: the run's data.system_prompt

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise OutputError(f"--max-new-tokens: {self.max_new_tokens} is not a positive number of "
                              f"tokens; give e.g. 128")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise OutputError(f"--temperature: {self.temperature} is not a number from 0 (greedy) to 2; "
                              f"give e.g. 0.7")
        if not 0 < self.top_p <= 1:  # also false for nan
            raise OutputError(f"--top-p: {self.top_p} is not in (0, 1]; give e.g. 0.9")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise OutputError(f"--seed: {self.seed} is not a seed torch takes (0 to 2**64 - 1); give e.g. 0")


def check_causal(recipe: Any) -> None:
    """A run whose task labels rather than writes cannot generate: say which command it wants."""
    check_command(recipe, "generate")


def _rows(recipe: Any) -> Any:
    """The run's row format: it renders a prompt the way training rendered its rows."""
    return get_task(recipe).row_format(recipe)


def typed_prompt(recipe: Any, text: str) -> str:
    """A prompt a person typed, made into the prompt the run trained on (its row format's
    `typed_prompt`: an instruction run's one-column prompt_template is filled with it)."""
    return str(_rows(recipe).typed_prompt(recipe, text))


def typed_prompt_note(recipe: Any) -> str:
    """What `typed_prompt` does to a typed text, in words ('' when nothing)."""
    return str(_rows(recipe).typed_prompt_note(recipe))


def uses_chat_template(loaded: Any, conversation: bool = False) -> bool:
    """Whether a prompt goes through the tokenizer's chat template, as the run's training
    rendered its rows (`RowFormat.uses_chat_template`); never when the tokenizer has none."""
    if not getattr(loaded.tokenizer, "chat_template", None):
        return False
    return bool(_rows(loaded.recipe).uses_chat_template(loaded.recipe, conversation))


def prompt_ids(loaded: Any, prompt: str | Messages, system: str | None = None) -> list[int]:
    """The token ids the model continues from, rendered the way the run trained (with
    `system`, or else the run's data.system_prompt, as the system turn of a chat template)."""
    tok = loaded.tokenizer
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if not messages:
        raise OutputError("generate: no prompt (an empty conversation)")
    if uses_chat_template(loaded, conversation=not isinstance(prompt, str)):
        from .data.chat import with_system

        messages = with_system(messages, system if system is not None
                               else getattr(loaded.recipe.data, "system_prompt", None))
        try:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # a template that rejects these roles, say
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise OutputError(f"the tokenizer's chat template failed ({type(exc).__name__}: {first}); "
                              f"give single prompts instead") from None
        return list(tok(text, add_special_tokens=False)["input_ids"])
    if isinstance(prompt, str):
        # plain text continues as is; an instruction prompt ends in the newline training put there
        text = prompt + _rows(loaded.recipe).prompt_suffix
    else:  # turns joined the way instruction rows were: prompt\n response<eos> prompt\n ...
        eos = tok.eos_token or ""
        text = "".join(m["content"] + ("\n" if m.get("role") != "assistant" else eos) for m in messages)
    return _bos(tok) + list(tok(text, add_special_tokens=False)["input_ids"])


def _bos(tok: Any) -> list[int]:
    """BOS only where the tokenizer itself adds it (Llama does, GPT-2 does not), as training did."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is not None and tok("a", add_special_tokens=True)["input_ids"][:1] == [bos]:
        return [bos]
    return []


def generate(loaded: Any, messages_or_prompt: str | Messages, *,
             options: GenerationOptions | None = None,
             on_text: Callable[[str], None] | None = None,
             stop: threading.Event | None = None, **opts: Any) -> str:
    """The model's reply to a prompt or to a conversation (a list of {"role", "content"}).

    Sampling: `options`, or its fields as keywords (max_new_tokens=64, greedy=True, seed=0...).
    `on_text` receives the reply piece by piece as it is produced (for streaming to a screen);
    setting `stop` (from another thread or a signal handler) ends the reply after the current
    token, and what was produced so far is returned.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

    check_causal(loaded.recipe)
    options = options or GenerationOptions(**opts)
    options.check()
    tok, model = loaded.tokenizer, loaded.model
    ids = prompt_ids(loaded, messages_or_prompt, options.system)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and not isinstance(messages_or_prompt, str):
        # a long conversation forgets its oldest turns rather than overflow the model
        messages = list(messages_or_prompt)
        while len(ids) >= limit and len(messages) > 2:
            messages = messages[2:]
            ids = prompt_ids(loaded, messages, options.system)
    if isinstance(limit, int) and len(ids) >= limit:
        raise OutputError(f"the prompt is {len(ids)} tokens; this model reads at most {limit} "
                          f"(with the reply); shorten it")
    room = limit - len(ids) if isinstance(limit, int) else options.max_new_tokens
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    kwargs: dict[str, Any] = {"max_new_tokens": min(options.max_new_tokens, room), "pad_token_id": pad,
                              "eos_token_id": eos}
    if options.greedy or options.temperature == 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=options.temperature, top_p=options.top_p, top_k=None)
    if options.seed is not None:
        torch.manual_seed(options.seed)

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):  # noqa: ANN001
            flag = stop is not None and stop.is_set()
            return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)

    if stop is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_Stop()])
    if on_text is not None:
        emit = on_text   # narrowed: a class body does not keep `on_text is not None`

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    emit(text)

        kwargs["streamer"] = _Streamer(tok, skip_prompt=True, skip_special_tokens=True)
    device = next(model.parameters()).device
    inputs = torch.tensor([ids], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), **kwargs)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def prompts_from_file(path: Any, recipe: Any, typed: Callable[[str], str] | None = None
                      ) -> list[str | Messages]:
    """Prompts from a file: JSONL rows (the recipe's prompt column, its prompt_template, or a
    chat run's messages, the last assistant turn left out), or else one prompt per line (each
    passed through `typed`, as a prompt typed on the command line is)."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise OutputError(f"--file: {path} is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise OutputError(f"--file: {path} cannot be read ({type(exc).__name__}); give UTF-8 text, "
                          f"one prompt per line, or JSONL") from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise OutputError(f"--file: {path} holds no prompts (it is empty)")
    jsonl = path.suffix in (".jsonl", ".ndjson", ".json") or (lines and lines[0].lstrip().startswith("{"))
    if not jsonl:
        return [typed(line) for line in lines] if typed is not None else list(lines)
    from .errors import DataError

    rows = _rows(recipe)
    out: list[str | Messages] = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            raise OutputError(f"--file: {path} line {number} is not JSON; give one JSON object per "
                              f"line, or plain text with one prompt per line") from None
        if not isinstance(row, dict):
            raise OutputError(f"--file: {path} line {number} is not a JSON object")
        try:
            out.append(rows.file_prompt(recipe, row, f"--file: {path} line {number}"))
        except DataError as exc:
            raise OutputError(str(exc)) from None
    return out


CHAT_HELP = "/exit or Ctrl-D ends, Ctrl-C stops a reply, /reset starts a new conversation"


def chat(loaded: Any, options: GenerationOptions, read: Callable[[str], str] = input,
         write: Callable[[str], None] | None = None) -> int:
    """A conversation in the terminal: each line you type is a user turn, the model's reply is
    streamed back; the whole conversation is the context of the next reply. Returns the number
    of replies."""
    import signal
    import sys

    if write is None:
        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # pragma: no cover (Windows)
        pass
    messages: Messages = []
    replies = 0
    write(f"chat ({CHAT_HELP})\n")
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            break
        text = line.strip()
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = []
            write("(new conversation)\n")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        stop = threading.Event()
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, lambda *_, stop=stop: stop.set()) if in_main else None
        write("model> ")
        try:
            reply = generate(loaded, messages, options=options, on_text=write, stop=stop)
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        write(" [stopped]\n" if stop.is_set() else "\n")
        messages.append({"role": "assistant", "content": reply})
        replies += 1
    return replies
