"""Preference pairs from chatterbot-corpus (no preference data set ships in a package here).

    python -m pefttool_preference.chatterbot_pairs OUT.jsonl [--seed 0]

How the pairs are made: for each conversation of the corpus (deduplicated as the chat data
is, `pefttool.data.chatterbot.conversations`), the prompt is every turn before its last reply
(a list of messages), `chosen` is that real reply, and `rejected` is the last reply of another
conversation drawn at random (seeded) from a *different* corpus file (another topic), never
the same text. So "rejected" is an off-topic reply: a preference a model can learn, made
without any model. Rows whose reply repeats in another topic are kept; the draw just skips
equal texts. Written to a temporary file and renamed, so an interrupted run leaves nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from pefttool.data.chatterbot import CorpusMissing, conversations, corpus_dir, write_jsonl


def pairs(rows: list[dict], seed: int = 0) -> list[dict]:
    """{"prompt": [...turns...], "chosen": reply, "rejected": another topic's reply, "category"}."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        messages = row["messages"]
        chosen = messages[-1]["content"]
        others = [r for r in rows if r["category"] != row["category"]
                  and r["messages"][-1]["content"] != chosen]
        if not others:
            continue
        rejected = rng.choice(others)["messages"][-1]["content"]
        out.append({"prompt": messages[:-1], "chosen": chosen, "rejected": rejected,
                    "category": row["category"]})
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the pairs file; 2 when the corpus package is missing."""
    parser = argparse.ArgumentParser(prog="python -m pefttool_preference.chatterbot_pairs",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out", help="the JSONL file to write")
    parser.add_argument("--seed", type=int, default=0, help="picks the rejected replies")
    args = parser.parse_args(argv)
    try:
        rows = pairs(conversations(corpus_dir()), args.seed)
    except CorpusMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = write_jsonl(Path(args.out), rows)
    print(f"{out}: {len(rows)} pairs (chosen: the conversation's reply; rejected: another "
          f"topic's reply, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
