"""Helpers for the TUI tests (no tests here): canned run folders and a fake trainer.

Canned runs have fixed times and values so snapshots never depend on a clock. The fake
trainer is a script taking the same arguments as `pefttool run` (RECIPE --set
output.dir=... --quiet) that writes plausible events over a second or two; it lets the
dashboard, Stop, crash and out-of-memory paths be tested without torch.
"""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

from pefttool.events import (CheckpointEvent, EndEvent, EvalEvent, EventLog, LogEvent, StartEvent,
                             StepEvent)

T0 = 1_735_700_000.0   # 2025-01-01 02:53:20 UTC: every canned time counts from here


def canned_events(run_dir: Path, name: str = "demo", status: str = "completed",
                  epochs: int = 3, steps_per_epoch: int = 20, log_every: int = 2,
                  upto: int | None = None, pid: int = 999_999, t0: float = T0) -> list:
    """Events of a classification LoRA run; `upto` cuts it short (a run still going)."""
    total = epochs * steps_per_epoch
    last = total if upto is None else upto
    recipe = {"name": name, "method": {"strategy": "lora"}, "train": {"epochs": epochs}}
    events: list = [
        StartEvent(run_dir=str(run_dir), recipe=recipe, strategy="lora", total_steps=total,
                   steps_per_epoch=steps_per_epoch, epochs=epochs, params_total=22_713_216,
                   params_trainable=294_912, model_memory_mb=86.6, device="cpu", pid=pid,
                   time=t0),
        LogEvent(level="info", message="data: 3000 train rows, 1000 eval rows (12 duplicates dropped)",
                 time=t0 + 1),
        EvalEvent(step=0, epoch=0.0, metrics={"accuracy": 0.49, "eval_loss": 0.6931},
                  metric="accuracy", value=0.49, best=None, is_best=False, bad_evals=0, before=True,
                  time=t0 + 2),
    ]
    best = None   # the baseline before training is never the best
    for step in range(log_every, last + 1, log_every):
        t = t0 + 2 + step * 1.5
        loss = 0.69 * math.exp(-step / 25) + 0.12 + 0.03 * math.sin(step / 2)
        events.append(StepEvent(step=step, total_steps=total, epoch=step / steps_per_epoch,
                                loss=round(loss, 4), lr=1e-3 * (1 - step / total),
                                tokens_per_s=2048.0, samples_per_s=32.0, elapsed_s=step * 1.5,
                                eta_s=(total - step) * 1.5, rss_mb=812.0, time=t))
        if step % steps_per_epoch == 0:
            value = round(0.49 + 0.33 * (1 - math.exp(-step / 20)), 4)
            is_best = best is None or value > best
            best = value if is_best else best
            events.append(EvalEvent(step=step, epoch=step / steps_per_epoch,
                                    metrics={"accuracy": value, "eval_loss": round(loss + 0.05, 4)},
                                    metric="accuracy", value=value, best=best, is_best=is_best,
                                    bad_evals=0, time=t + 0.5))
            events.append(CheckpointEvent(step=step, path=str(run_dir / f"checkpoints/step-{step:06d}"),
                                          reason="epoch", time=t + 0.6))
    if upto is None:
        events.append(EndEvent(status=status, step=last, duration_s=2 + last * 1.5 + 1,
                               metric="accuracy", best=best, best_step=last, time=t0 + 3 + last * 1.5,
                               model_dir=str(run_dir / "model"),
                               exit_code={"completed": 0, "failed": 3, "interrupted": 130}.get(status, 0),
                               message="loss became NaN at step 60" if status == "failed" else ""))
    return events


def write_canned_run(root: Path, name: str, **kwargs) -> Path:
    """A run folder `root/name` holding a canned events.jsonl."""
    run_dir = Path(root) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(run_dir)
    for event in canned_events(run_dir, name=name.split("-")[0], **kwargs):
        log.write(event)
    log.close()
    return run_dir


FAKE_TRAINER = textwrap.dedent('''
    """Pretends to be `pefttool run RECIPE --set output.dir=... --quiet` (see test_tui_support)."""
    import json, os, signal, sys, time, tomllib
    from pathlib import Path
    from pefttool.events import (CheckpointEvent, EndEvent, EvalEvent, EventLog, LogEvent,
                                 StartEvent, StepEvent)

    args = sys.argv[1:]
    assert args[0] == "run", args
    recipe_path = Path(args[1])
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    out = None
    for text in sets:
        key, _, value = text.partition("=")
        if key == "output.dir":
            out = Path(json.loads(value))
    recipe = tomllib.loads(recipe_path.read_text())
    mode = os.environ.get("FAKE_TRAINER_MODE", "ok")
    steps = int(os.environ.get("FAKE_TRAINER_STEPS", "20"))
    delay = float(os.environ.get("FAKE_TRAINER_DELAY", "0.05"))
    print("fake trainer starting", sets, file=sys.stderr, flush=True)
    if mode == "bad-input":
        print("error: train.lr: Input should be greater than 0", file=sys.stderr)
        sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    log = EventLog(out)
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    lr = float(recipe.get("train", {}).get("lr", 5e-5))
    for text in sets:
        if text.startswith("train.lr="):
            lr = float(text.partition("=")[2])
    log.write(StartEvent(run_dir=str(out), recipe=recipe, strategy="lora", total_steps=steps,
                         steps_per_epoch=steps // 2, epochs=2, params_total=1000,
                         params_trainable=100, model_memory_mb=1.0, device="cpu"))
    log.write(LogEvent(level="info", message=f"fake trainer, lr {lr}"))
    t0 = time.time()
    for step in range(1, steps + 1):
        time.sleep(delay)
        if mode == "crash" and step == steps // 2:
            print("Traceback (most recent call last):\\n  File \\"engine.py\\"\\n"
                  "RuntimeError: CUDA error: something exploded", file=sys.stderr, flush=True)
            sys.exit(1)
        if mode == "oom" and step == steps // 2:
            print("allocating a very large tensor", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        log.write(StepEvent(step=step, total_steps=steps, epoch=step / (steps // 2),
                            loss=1.0 / step, lr=lr, tokens_per_s=1000.0, samples_per_s=10.0,
                            elapsed_s=time.time() - t0, eta_s=(steps - step) * delay,
                            rss_mb=100.0))
        if stop:
            log.write(CheckpointEvent(step=step, path=str(out / "checkpoints"), reason="stop"))
            log.write(EndEvent(status="interrupted", step=step, duration_s=time.time() - t0,
                               message="resume with pefttool resume", exit_code=130))
            sys.exit(130)
        if step % (steps // 2) == 0:
            log.write(EvalEvent(step=step, epoch=step / (steps // 2), metrics={"accuracy": 0.9},
                                metric="accuracy", value=0.9, best=0.9, is_best=True,
                                bad_evals=0))
    print("fake trainer finished", file=sys.stderr, flush=True)   # after stderr.log moved
    log.write(EndEvent(status="completed", step=steps, duration_s=time.time() - t0,
                       metric="accuracy", best=0.9, best_step=steps))
    sys.exit(0)
''')


def fake_trainer_command(tmp_path: Path) -> list[str]:
    """The command prefix (before RECIPE) that runs the fake trainer."""
    script = Path(tmp_path) / "fake_trainer.py"
    script.write_text(FAKE_TRAINER, encoding="utf-8")
    return [sys.executable, str(script), "run"]


FAKE_RECIPE = textwrap.dedent('''
    name = "fake"
    [model]
    path = "{model}"
    [task]
    type = "classification"
    labels = ["negative", "positive"]
    [data]
    train = "{data}"
    [method]
    strategy = "lora"
    r = 4
    [train]
    epochs = 2
    lr = 0.005
    batch_size = 8
    [early_stopping]
    enabled = false
''')


def write_fake_recipe(folder: Path) -> Path:
    """A recipe that validates (its model folder and CSV exist) but only the fake trainer runs."""
    folder = Path(folder)
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text("text,label\nfine,positive\nbad,negative\n")
    path = folder / "fake.toml"
    path.write_text(FAKE_RECIPE.format(model="model", data="train.csv"), encoding="utf-8")
    return path


def screen_text(app) -> str:
    """What the terminal shows right now, as plain text (for assertions and debugging)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True,
                                                       screen_stack=app._background_screens))
    return console.export_text(styles=False)
