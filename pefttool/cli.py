"""The `pefttool` command: thin subcommands over the importable API.

Known errors print one line (a recipe's problems: one line each) on stderr and exit 2 (3 for
a failed run, 130 for an interrupted one); a traceback appears only with PEFTTOOL_DEBUG=1.
`pefttool --help` imports neither torch nor textual.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .errors import PefttoolError, one_line

DEBUG_ENV = "PEFTTOOL_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pefttool",
        description="Fine-tune pretrained transformers from TOML recipes. "
                    "With no command, opens the terminal UI.")
    parser.add_argument("--version", action="version", version=f"pefttool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def recipe_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("recipe", type=Path, help="path to a recipe TOML file")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set train.lr=2e-4 (repeatable)")
        return p

    recipe_command("validate", "check a recipe and list every problem")
    run = recipe_command("run", "fine-tune as a recipe says (headless)")
    run.add_argument("--resume", action="store_true",
                     help="continue the newest unfinished run of this recipe from its last checkpoint")
    run.add_argument("--quiet", action="store_true", help="print only the summary")
    run.add_argument("--processes", type=int, metavar="N",
                     help="train in N processes (one per GPU; gloo on CPU), through Accelerate "
                          "(sets distributed.processes)")
    plan = recipe_command("plan", "estimate parameters, peak memory (CPU and a GPU), steps, tokens "
                                  "and time before training; full / LoRA / QLoRA side by side")
    plan.add_argument("--gpu-gib", type=_positive_float, metavar="GIB",
                      help="also estimate for a CUDA device of this size (GiB): fits, headroom")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (sizes in bytes)")
    plan.add_argument("--calibrate", action="store_true",
                      help="run a few real steps (temporary output, deleted) and extrapolate the time")
    plan.add_argument("--calibrate-steps", type=int, default=5, metavar="N",
                      help="steps for --calibrate (default 5; the first is warm-up)")
    plan.add_argument("--no-data", action="store_true",
                      help="skip reading and tokenizing the data (no steps/tokens per epoch)")
    inspect = recipe_command("inspect", "show the cleaned, tokenized rows a recipe trains on (no model loads)")
    inspect.add_argument("--rows", type=int, default=3, metavar="N", help="train rows to show (default 3)")
    inspect.add_argument("--start", type=int, default=0, metavar="I",
                         help="show rows from the I-th train row on (0-based; default 0)")
    inspect.add_argument("--random", type=int, nargs="?", const=0, default=None, metavar="SEED",
                         help="show a random sample of train rows instead (seeded: SEED, default 0)")
    inspect.add_argument("--multi-turn", action="store_true",
                         help="only chat rows with several assistant replies (loss spans)")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    resume = sub.add_parser("resume", help="continue a run from its last checkpoint (a finished "
                            "run: rebuild its damaged model/ from its best checkpoint)")
    resume.add_argument("run_dir", type=Path, help="the run's directory (holds events.jsonl)")
    resume.add_argument("--quiet", action="store_true", help="print only the summary")
    resume.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a key a resume may change: train.threads, train.log_every, "
                             "train.keep_checkpoints, train.checkpoint_every, train.compile, "
                             "eval.batch_size (repeatable)")
    predict = sub.add_parser("predict", help="label texts with a finished classification run")
    predict.add_argument("run_dir", type=Path, help="the run's directory")
    predict.add_argument("texts", nargs="*", help="texts to label (none: read --file or stdin)")
    predict.add_argument("--file", type=Path, help="a CSV/JSONL file; its data.text_column is labelled")
    predict.add_argument("--json", action="store_true", help="one JSON object per text")
    gen = sub.add_parser("generate", help="replies from a finished causal-LM run (prompts, a file, or a chat)",
                         description="Replies from a finished causal-LM run: --prompt, --file, prompts "
                                     "on stdin, or (on a terminal, with neither) an interactive chat.")
    gen.add_argument("run_dir", type=Path, help="the run's directory")
    gen.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                     help="a prompt (repeatable)")
    gen.add_argument("--file", type=Path, help="prompts: one per line, or JSONL with the run's prompt column")
    gen.add_argument("--raw", action="store_true",
                     help="send typed prompts as they are (by default a run whose data.prompt_template "
                          "names one column has each typed prompt fill it, as training did)")
    gen.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                     help="longest reply in tokens (default 128)")
    gen.add_argument("--temperature", type=float, default=0.7,
                     help="sampling temperature; lower is more predictable (default 0.7)")
    gen.add_argument("--top-p", type=float, default=0.9,
                     help="sample from the likeliest tokens covering this probability (default 0.9)")
    gen.add_argument("--greedy", action="store_true", help="always take the likeliest token (no sampling)")
    gen.add_argument("--seed", type=int, help="fix the sampling, so a prompt gives the same reply again")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt")
    gen.add_argument("--system", metavar="TEXT",
                     help="the system turn of the chat template (default: the run's data.system_prompt)")
    gen.add_argument("--base", action="store_true",
                     help="answer with the run's base model (before training), rendered the same way")
    export = sub.add_parser("export", help="write a run's model for use elsewhere")
    export.add_argument("run_dir", type=Path, help="the run's directory")
    export.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    export.add_argument("--merge", action="store_true",
                        help="merge the adapter into its base: a plain transformers model, no PEFT")
    export.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="weights' dtype with --merge (default fp32)")
    export.add_argument("--gguf", action="store_true",
                        help="also convert the merged model to GGUF (needs llama.cpp's converter)")
    plot = sub.add_parser("plot", help="draw runs' loss, learning-rate and eval curves into one PNG")
    plot.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="one or more runs")
    plot.add_argument("--out", type=Path,
                      help="the PNG to write (default: RUN_DIR/plots.png for one run, ./plots.png for several)")
    plugins = sub.add_parser("plugins", help="list the loaded plugins, their strategies and tasks")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    new = sub.add_parser("new-plugin", help="scaffold a strategy (or --task) plugin package that passes its own test")
    new.add_argument("name", help="plugin and strategy (or task) name, e.g. bitfit")
    new.add_argument("--task", action="store_true", help="scaffold a task plugin instead of a strategy")
    new.add_argument("--dir", type=Path, default=Path("."), help="where to create pefttool-NAME/")
    doctor = sub.add_parser("doctor", help="will this machine run my recipe: torch, CUDA, library "
                                           "versions against the tested ones, bitsandbytes, disk")
    doctor.add_argument("--recipe", type=Path, metavar="RECIPE",
                        help="also validate this recipe and check plan's peak against this machine")
    doctor.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of --recipe (repeatable)")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("recipes", help="list built-in and local recipes with strategy and model")
    runs = sub.add_parser("runs", help="list runs under an output root")
    runs.add_argument("root", type=Path, nargs="?", default=Path("runs"))
    tui = sub.add_parser("tui", help="open the terminal UI (the default with no command)")
    tui.add_argument("--runs-root", type=Path, default=Path("runs"),
                     help="where runs are listed and launched (default: ./runs)")
    tui.add_argument("--attach", type=Path, metavar="RUN_DIR",
                     help="open a run's live dashboard, e.g. one started with nohup pefttool run")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of GiB (e.g. 24)") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive size in GiB (e.g. 24)")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = dispatch(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is caught below
        return code
    except BrokenPipeError:  # `pefttool plan … | head -1`: the reader left; so do we, quietly
        _stdout_to_devnull()
        return CLOSED_PIPE
    except PefttoolError as exc:
        if os.environ.get(DEBUG_ENV):
            # The traceback for whoever asked, and still the exit code scripts rely on
            # (2 bad input, 3 training failed...), not Python's 1.
            import traceback

            traceback.print_exc()
            return exc.exit_code
        # (several processes: each says it; the launcher's wrapper shows the first one)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, with the way to see more
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"internal error: {type(exc).__name__}: {one_line(exc, 300)} (rerun with {DEBUG_ENV}=1 for the "
              f"traceback, and please report it)", file=sys.stderr)
        return 1


CLOSED_PIPE = 141  # 128 + SIGPIPE, as a command killed by the closed pipe would exit


def _stdout_to_devnull() -> None:
    """Point standard output at /dev/null, so the interpreter's last flush at exit does not hit
    the closed pipe again (Python's documented way to leave on EPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def dispatch(args: argparse.Namespace) -> int:
    command = args.command or "tui"
    if command == "validate":
        return cmd_validate(args)
    if command == "run":
        return cmd_run(args)
    if command == "resume":
        return cmd_resume(args)
    if command == "plan":
        return cmd_plan(args)
    if command == "plugins":
        return cmd_plugins(args)
    if command == "predict":
        return cmd_predict(args)
    if command == "export":
        return cmd_export(args)
    if command == "plot":
        return cmd_plot(args)
    if command == "inspect":
        return cmd_inspect(args)
    if command == "generate":
        return cmd_generate(args)
    if command == "new-plugin":
        from .scaffold import new_plugin

        root = new_plugin(args.name, args.dir, task=args.task)
        print(f"created {root}: pip install -e '{root}[test]', then pytest {root}")
        return 0
    if command == "recipes":
        return cmd_recipes()
    if command == "doctor":
        return cmd_doctor(args)
    if command == "runs":
        return cmd_runs(args)
    return cmd_tui(args)


def cmd_validate(args: argparse.Namespace) -> int:
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    # The strategy's own check (a missing library, an impossible option) needs no model.
    from .settled import settle

    settle(recipe)
    # The columns against the data files' headers (cheap: no dataset is built).
    from .data.columns import column_problems
    from .errors import RecipeError

    problems = column_problems(recipe)
    if problems:
        raise RecipeError(str(args.recipe), problems)
    print(f"{args.recipe}: ok ({recipe.task.type}, strategy {recipe.method.strategy}, "
          f"model {recipe.model.path})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .recipe import load_recipe

    overrides = list(args.overrides)
    if args.processes is not None:
        overrides.append(f"distributed.processes={args.processes}")
    recipe = load_recipe(args.recipe, overrides)  # a bad recipe fails before torch loads
    if _needs_launch(recipe):
        from .distributed import run_launched

        argv = ["run", str(args.recipe), *[f"--set={o}" for o in overrides]]
        argv += ["--resume"] * args.resume + ["--quiet"] * args.quiet
        return run_launched(argv, recipe.distributed.processes, recipe.distributed)
    from .headless import run_headless

    return run_headless(recipe, resume=args.resume, quiet=args.quiet)


def cmd_plan(args: argparse.Namespace) -> int:
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # a bad recipe: its lines, exit 2
    if args.calibrate and args.calibrate_steps < 2:
        from .errors import PefttoolError as Bad

        raise Bad(f"--calibrate-steps: {args.calibrate_steps} is too few; give at least 2 "
                  f"(the first step is warm-up)")
    from .plan import calibrate, data_estimate, estimate, render

    data = None if args.no_data else data_estimate(recipe)
    plan = estimate(recipe, device=args.gpu_gib if args.gpu_gib else "cpu", data=data)
    if args.calibrate:
        plan.calibration = calibrate(args.recipe, args.overrides, recipe, steps=args.calibrate_steps,
                                     total_steps=data.total_steps if data else None)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else render(plan))
    return 0


def _needs_launch(recipe) -> bool:
    """A recipe for several processes, started as one: re-run it under the launcher."""
    from .distributed import world_size

    d = recipe.distributed
    return world_size() == 1 and (d.processes > 1 or d.num_machines > 1 or d.config_file is not None)


def cmd_resume(args: argparse.Namespace) -> int:
    from .headless import resume_headless
    from .runfolder.lifecycle import saved_recipe
    from .runfolder.rundir import check_resume_overrides

    check_resume_overrides(args.overrides)  # before anything loads
    recipe = saved_recipe(args.run_dir, args.overrides)
    # a multi-process run resumes with as many processes; rebuilding a finished run's model/
    # trains nothing and takes one
    if _needs_launch(recipe) and not _rebuilds_only(args.run_dir):
        from .distributed import run_launched

        argv = ["resume", str(args.run_dir), *[f"--set={o}" for o in args.overrides]]
        argv += ["--quiet"] * args.quiet
        return run_launched(argv, recipe.distributed.processes, recipe.distributed)
    return resume_headless(args.run_dir, quiet=args.quiet, overrides=args.overrides)


def _rebuilds_only(run_dir: Path) -> bool:
    """A finished run whose model/ is damaged or gone: resume only rebuilds model/."""
    from .runfolder.resumable import resumability

    return resumability(Path(run_dir).resolve()).action == "rebuild"


def cmd_predict(args: argparse.Namespace) -> int:
    from .errors import PefttoolError as Bad
    from .runfolder.lifecycle import saved_run
    from .tasks import check_command, get_task
    from .trained import load_trained, predict

    _, recipe = saved_run(args.run_dir)  # a bad run dir or a run that writes text: before any model loads
    check_command(recipe, "predict")
    task = get_task(recipe)
    texts = list(args.texts)
    if args.file is not None:
        texts += _texts_from_file(args.file, recipe.data.text_column)
    if not texts and not sys.stdin.isatty():
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise Bad("predict: no texts; give them as arguments, with --file, or on stdin")
    trained = load_trained(args.run_dir)
    show = sys.stderr.isatty() and len(texts) > 64
    batch = 32
    for first in range(0, len(texts), batch):  # printed as they are labelled: Ctrl-C keeps what is out
        chunk = texts[first:first + batch]
        for text, answer in zip(chunk, predict(trained, chunk, batch_size=batch)):
            if args.json:
                print(json.dumps({"text": text, **task.prediction_fields(answer)}))
            elif answer.answer in answer.scores:  # a label, and its probability
                print(f"{answer.answer}\t{answer.scores[answer.answer]:.3f}\t{text}")
            else:
                print(f"{answer.answer}\t{text}")
        sys.stdout.flush()
        if show:
            print(f"\r{min(first + batch, len(texts))}/{len(texts)}", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)
    return 0


def _texts_from_file(path: Path, column: str = "text") -> list[str]:
    """The text column of a CSV/JSONL file, read like training data (its column name is the
    run's data.text_column, default 'text'); a byte-order mark is ignored, a CSV header that
    names a column twice is refused (which one would be meant?)."""
    import csv

    from .errors import DataError

    if not path.is_file():
        raise DataError(f"--file: {path} is not a file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            if path.suffix in (".jsonl", ".json", ".ndjson"):
                rows = [json.loads(line) for line in fh if line.strip()]
            else:
                reader = csv.reader(fh, delimiter="\t" if path.suffix == ".tsv" else ",")
                header = next(reader, [])
                twice = sorted({name for name in header if header.count(name) > 1})
                if twice:
                    raise DataError(f"--file: {path} names the column '{twice[0]}' twice in its header; "
                                    f"rename one")
                rows = [dict(zip(header, values)) for values in reader]
    except (UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise DataError(f"--file: {path} cannot be read ({type(exc).__name__}: {exc}); give UTF-8 "
                        f"CSV or JSONL with a '{column}' column") from None
    if not rows or not all(isinstance(r, dict) and isinstance(r.get(column), str) for r in rows):
        raise DataError(f"--file: {path} has no '{column}' text in every row (the run's "
                        f"data.text_column)")
    return [r[column] for r in rows]


def cmd_plot(args: argparse.Namespace) -> int:
    from .errors import OutputError
    from .plots import plot_runs
    from .runfolder.rundir import PLOT_FILE

    own = len(args.run_dirs) == 1 and args.out is None
    out = args.run_dirs[0] / PLOT_FILE if own else (args.out or Path(PLOT_FILE))
    if out.suffix.lower() != ".png":
        raise OutputError(f"--out: {out} does not end in .png; give a PNG file name, e.g. curves.png")
    if out.is_dir():
        raise OutputError(f"--out: {out} is a folder; give a PNG file name inside it")
    if out.exists() and not own:
        raise OutputError(f"--out: {out} exists; choose a new file name or remove it (plot "
                          f"never overwrites a file)")
    if not out.parent.is_dir():
        raise OutputError(f"--out: the folder {out.parent} does not exist")
    written = plot_runs(args.run_dirs, out, warn=lambda line: print(line, file=sys.stderr))
    print(f"plot: {written}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .recipe import load_recipe

    if args.rows < 0:
        raise PefttoolError(f"--rows: {args.rows} is negative; give how many rows to show, e.g. 3")
    if args.start < 0:
        raise PefttoolError(f"--start: {args.start} is negative; rows count from 0")
    recipe = load_recipe(args.recipe, args.overrides)
    from .inspection import format_text, inspect_recipe

    preview = inspect_recipe(recipe, rows=args.rows, start=args.start, seed=args.random,
                             multi_turn=args.multi_turn)
    if args.json:
        print(json.dumps(preview.to_dict(), ensure_ascii=False))
    else:
        print(format_text(preview, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR")))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .errors import OutputError
    from .generate import (
        GenerationOptions,
        chat,
        check_causal,
        generate,
        prompts_from_file,
        typed_prompt,
        uses_chat_template,
    )
    from .runfolder.lifecycle import saved_run
    from .trained import load_trained

    options = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, greedy=args.greedy, seed=args.seed, system=args.system)
    options.check()
    _, recipe = saved_run(args.run_dir)  # a bad run dir or a classification run: before any model loads
    check_causal(recipe)
    typed = (lambda text: text) if args.raw else (lambda text: typed_prompt(recipe, text))  # noqa: E731
    prompts: list = [typed(p) for p in args.prompt]
    if args.file is not None:   # (JSONL rows fill the template from their own columns)
        prompts += prompts_from_file(args.file, recipe, typed=typed)
    interactive = not prompts and sys.stdin.isatty()
    if not prompts and not interactive:
        prompts = [typed(line.rstrip("\n")) for line in sys.stdin if line.strip()]
        if not prompts:
            raise OutputError("generate: no prompts; give --prompt TEXT, --file F, prompts on stdin, "
                              "or run it on a terminal for a chat")
    if interactive and args.json:
        raise OutputError("--json: give the prompts with --prompt or --file (the chat is for people)")
    loaded = load_trained(args.run_dir, base=args.base)
    if args.system is not None and not uses_chat_template(loaded, conversation=True):
        raise OutputError("--system: this run's prompts go through no chat template (data.chat_template "
                          "is false, or the tokenizer has none), so there is no system turn to set")
    if interactive:
        chat(loaded, options)
        return 0
    for prompt in prompts:
        reply = generate(loaded, prompt, options=options)
        if args.json:
            print(json.dumps({"prompt": prompt, "reply": reply}), flush=True)
        else:
            shown = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            print(f"> {shown}\n{reply}\n", flush=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .errors import PefttoolError as Bad
    from .runfolder.model_dir import check_export_out
    from .trained import export, gguf_converter

    check_export_out(args.out)  # before anything loads
    converter = gguf_converter() if args.gguf else None
    if args.gguf and converter is None:
        raise Bad("--gguf: converting to GGUF needs llama.cpp's convert_hf_to_gguf.py on PATH (from "
                  "a llama.cpp checkout); export with --merge, then run it on the folder")
    out = export(args.run_dir, args.out, merge=args.merge or args.gguf, dtype=args.dtype)
    print(f"exported {'merged model' if args.merge or args.gguf else 'model'} to {out}")
    if args.gguf:
        import subprocess

        target = out / "model.gguf"
        assert converter is not None  # --gguf without a converter was refused above
        done = subprocess.run([converter, str(out), "--outfile", str(target)])
        if done.returncode != 0:
            raise Bad(f"--gguf: the converter failed (exit {done.returncode}); the merged model is "
                      f"in {out}")
        print(f"GGUF: {target}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import get_plugin_host

    try:
        host = get_plugin_host()
    except PefttoolError as exc:
        if args.json:  # a machine reading stdout gets JSON, also for an error
            print(json.dumps({"error": str(exc), "exit_code": exc.exit_code}))
        raise
    rows = host.describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        if "broken" in row:
            print(f"{row['name']:<14} BROKEN: {row['broken']}")
            if os.environ.get("PEFTTOOL_DEBUG"):
                print(host.broken_tracebacks[row["name"]], end="")
            continue
        source = f"{row['distribution']} {row['version']}".strip() or row["module"]
        offers = [f"strategies: {', '.join(row['strategies'])}" if row["strategies"] else "",
                  f"tasks: {', '.join(row['tasks'])}" if row["tasks"] else ""]
        print(f"{row['name']:<14} {source:<24} {'; '.join(o for o in offers if o) or 'hooks only'}")
        registries: tuple[tuple[str, dict[str, Any], str], ...] = (
            ("strategy", host.strategies, "strategy_options"), ("task", host.tasks, "task_options"))
        for noun, registry, options_key in registries:
            options = row[options_key]
            for name in (n for n in registry if n in options):
                print(f"{'':<14}   {name} ({noun}): {registry[name].description}")
                for key, spec in options[name].get("properties", {}).items():
                    default = f" (default {json.dumps(spec['default'])})" if "default" in spec else ""
                    print(f"{'':<14}     {key}{default}: {spec.get('description', '')}".rstrip(": "))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Exit 0: ready or warnings only; 1: a problem found (the line says which)."""
    from .doctor import as_json, diagnose, render

    if args.overrides and args.recipe is None:
        from .errors import PefttoolError as Bad

        raise Bad("--set: give --recipe RECIPE for the values to override")
    checks = diagnose(args.recipe, args.overrides)
    print(json.dumps(as_json(checks), indent=2) if args.json else render(checks))
    return 1 if any(c.status == "problem" for c in checks) else 0


def cmd_recipes() -> int:
    from .catalog import find_recipes
    from .recipe import DEFAULT_STRATEGY

    for entry in find_recipes():
        status = "ok" if not entry.problems else f"{len(entry.problems)} problem(s)"
        # str(): a broken recipe may hold a table or a number where a name belongs.
        print(f"{entry.origin:<9} {str(entry.path):<40} {str(entry.get('method.strategy', DEFAULT_STRATEGY)):<7} "
              f"{str(entry.get('task.type')):<15} {entry.get('model.path')}  [{status}]")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .errors import OutputError
    from .runfolder.summary import format_duration, list_runs

    if args.root.exists() and not args.root.is_dir():
        raise OutputError(f"{args.root} is a file; pefttool runs takes the folder that holds run "
                          f"folders (default: ./runs)")
    runs = list_runs(args.root)
    if not runs:
        print(f"no runs under {args.root}")
    for run in runs:
        # the baseline before training is "before", never the best
        best = f"{run.metric}={run.best:.4f}" if run.best is not None else "-"
        before = f"before {run.before:.4f}" if run.before is not None else ""
        procs = getattr(run.start, "processes", 1) if run.start is not None else 1
        procs_text = f"{procs} processes" if procs > 1 else ""
        print(f"{run.status:<13} {str(run.path):<40} {best:<22} {format_duration(run.duration_s):>7} "
              f"{before} {procs_text}".rstrip())
        if run.bad_lines:
            print(f"warning: {run.path}: {run.bad_lines} line(s) of events.jsonl are not events "
                  f"and were skipped", file=sys.stderr)
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from .errors import OutputError
    from .runfolder.rundir import RunDir

    attach = getattr(args, "attach", None)
    if attach is not None and not RunDir(attach).is_run():  # it would wait for events forever
        inside = sorted(p.name for p in Path(attach).glob("*") if p.is_dir() and RunDir(p).is_run())
        hint = f"; the runs in it: {', '.join(inside[:3])}{' …' if len(inside) > 3 else ''}" if inside else ""
        raise OutputError(f"--attach: {attach} is not a pefttool run folder (no run marker){hint}; "
                          f"pass the folder pefttool run printed")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):  # it would write escape codes forever
        raise OutputError("pefttool tui needs a terminal (its input and output are not one); "
                          "without one, use pefttool runs, and tail -f RUN_DIR/events.jsonl to "
                          "follow a run")
    from .tui.app import make_app

    app = make_app(runs_root=getattr(args, "runs_root", Path("runs")), attach=getattr(args, "attach", None))
    app.run()
    return app.return_code or 0


if __name__ == "__main__":  # how the launcher starts each process of a multi-process run
    from .distributed import leave

    leave(main())
