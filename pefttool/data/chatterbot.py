"""chatterbot-corpus's English conversations → `messages` JSONL for task.format = "chat".

    python -m pefttool.data.chatterbot OUT.jsonl [--language english] [--only C,C | --all-but C,C]

Each conversation in `chatterbot_corpus/data/<language>/*.yml` is a list of lines spoken in
turn; the first is the user's, the next the assistant's, and so on. A conversation of an odd
number of lines ends with a user line, which is dropped (a chat row must end with the reply to
learn); one-line conversations are skipped. The corpus repeats many conversations across and
within files: exact repeats are written once (before any train/eval split, so none leaks).
Files are read in name order, so the output is the same on every run; it is written to a
temporary file and renamed, so an interrupted run leaves no half-written OUT.
Needs the chatterbot-corpus package (pip install --no-deps chatterbot-corpus==1.3.3) and PyYAML.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path


class CorpusMissing(RuntimeError):
    pass


def corpus_dir(language: str = "english") -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusMissing("the chatterbot-corpus package is not installed; "
                            "pip install --no-deps chatterbot-corpus==1.3.3")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / language
    if not folder.is_dir():
        raise CorpusMissing(f"chatterbot-corpus has no '{language}' folder ({folder})")
    return folder


def conversations(folder: Path) -> list[dict]:
    """Every usable conversation, as {"messages": [...], "category": file stem}, deduplicated."""
    import yaml

    rows, seen = [], set()
    for path in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            if not isinstance(conv, list):
                continue
            lines = [str(x).strip() for x in conv if x is not None and str(x).strip()]
            if len(lines) % 2:
                lines = lines[:-1]
            if not lines:
                continue
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": text}
                        for i, text in enumerate(lines)]
            key = json.dumps(messages, ensure_ascii=False)
            if key in seen:
                continue
            seen.add(key)
            rows.append({"messages": messages, "category": path.stem})
    return rows


def write_jsonl(out: Path, rows: list[dict]) -> Path:
    """`rows` as JSON lines in `out`, written to a temporary file and renamed: an interrupted
    write leaves no half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pefttool.data.chatterbot",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the JSONL file to write")
    parser.add_argument("--language", default="english", help="a folder of chatterbot_corpus/data")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", metavar="CATEGORIES", help="comma-separated categories (file stems, "
                       "e.g. greetings,conversations) to write, and no other")
    which.add_argument("--all-but", metavar="CATEGORIES", help="comma-separated categories to leave out")
    args = parser.parse_args(argv)
    try:
        rows = conversations(corpus_dir(args.language))
    except CorpusMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    named = {c.strip() for c in (args.only or args.all_but or "").split(",") if c.strip()}
    unknown = named - {r["category"] for r in rows}
    if unknown:
        print(f"error: no category {', '.join(sorted(unknown))} in chatterbot-corpus "
              f"({', '.join(sorted({r['category'] for r in rows}))})", file=sys.stderr)
        return 2
    if args.only:
        rows = [r for r in rows if r["category"] in named]
    elif args.all_but:
        rows = [r for r in rows if r["category"] not in named]
    out = write_jsonl(Path(args.out), rows)
    turns = sum(len(r["messages"]) for r in rows)
    multi = sum(len(r["messages"]) > 2 for r in rows)
    print(f"{out}: {len(rows)} conversations ({multi} multi-turn), {turns} turns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
