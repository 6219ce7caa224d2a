"""The training engine: a recipe in, a fine-tuned and evaluated model out.

Set-up (`_setup`) is kept apart from the loop (`_train`), which reads top to bottom:
for each epoch, for each batch: step, log, maybe evaluate / checkpoint / stop. The engine
reports only through events (observer hooks + `RUN_DIR/events.jsonl`) and never imports a UI.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from .checkpoints import TrainState, checkpoint_dir, latest_checkpoint, replace_dir, save_checkpoint
from .errors import OutputError, PefttoolError, PluginError, TrainingError
from .events import (EVENTS_FILE, CheckpointEvent, EndEvent, EvalEvent, Event, EventLog, LogEvent,
                     StartEvent, StepEvent)
from .plugins import ObserverError, PluginHost, get_plugin_host
from .optim import build_optimizer
from .strategy import call_strategy
from .recipe import Recipe

MODEL_DIR = "model"
RECIPE_FILE = "recipe.toml"
METRICS_FILE = "metrics.json"
# Files a run writes; `output.overwrite = true` removes only these, never anything else.
RUN_ARTIFACTS = (MODEL_DIR, "checkpoints", EVENTS_FILE, RECIPE_FILE, METRICS_FILE, "stderr.log")

_HOOK_FOR = {"start": "pefttool_run_start", "step": "pefttool_step_end", "eval": "pefttool_eval_end",
             "checkpoint": "pefttool_checkpoint", "log": "pefttool_log", "end": "pefttool_run_end"}


@dataclass
class RunResult:
    run_dir: Path
    status: str                       # completed | early_stopped | interrupted | failed
    metric: str
    before: dict[str, float] = field(default_factory=dict)
    best: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None
    steps: int = 0
    duration_s: float = 0.0
    model_dir: Path | None = None
    exit_code: int = 0


# ----------------------------------------------------------------------------- public entry


def run_recipe(
    recipe: Recipe,
    resume: bool = False,
    run_dir: Path | None = None,
    host: PluginHost | None = None,
    observers: tuple[Any, ...] = (),
) -> RunResult:
    """Fine-tune as the recipe says. `observers` are plugin objects (with hookimpls) that see
    this run's events only. Raises `PefttoolError` for bad input or a failed run."""
    host = host or get_plugin_host()
    strategy = host.strategies[recipe.method.strategy]
    options = recipe.strategy_options
    call_strategy(strategy, "check", recipe, options)
    run_dir, checkpoint = _prepare_run_dir(recipe, resume, run_dir)
    names = [f"observer-{id(o)}" for o in observers]
    for name, obs in zip(names, observers):
        host.register(obs, name)
    log = EventLog(run_dir)
    emitter = _Emitter(host, log)
    on_error_before, host.on_error = host.on_error, recipe.plugins.on_error
    started = time.time()
    flushed_before = _denormals_flushed()
    try:
        with _stop_on_signals() as stop:
            run = _TrainingRun(recipe, strategy, options, run_dir, emitter, stop)
            return run.execute(checkpoint, started)
    except PefttoolError as exc:
        emitter.end_once(EndEvent(status="failed", step=emitter.last_step, duration_s=time.time() - started,
                                  message=str(exc), exit_code=exc.exit_code))
        raise
    except KeyboardInterrupt:
        emitter.end_once(EndEvent(status="interrupted", step=emitter.last_step,
                                  duration_s=time.time() - started, exit_code=130,
                                  message="aborted by a second interrupt; resume from the last checkpoint"))
        raise
    except BaseException as exc:
        emitter.end_once(EndEvent(status="failed", step=emitter.last_step, duration_s=time.time() - started,
                                  message=f"{type(exc).__name__}: {exc}", exit_code=1))
        raise
    finally:
        log.close()
        host.on_error = on_error_before
        for name in names:
            host.unregister(name)
        # The loop flushes denormals (fast CPU steps); that is process-wide CPU state, so give
        # the caller back what it had (numerical code after a run in the same process).
        if "torch" in sys.modules and _denormals_flushed() != flushed_before:
            sys.modules["torch"].set_flush_denormal(flushed_before)


def _denormals_flushed() -> bool:
    """Whether this thread's CPU flushes denormal floats to zero (torch.set_flush_denormal)."""
    return sys.float_info.min / 2 == 0.0


# ----------------------------------------------------------------------------- events


class _Emitter:
    """Writes each event to events.jsonl, then hands it to the observer hooks."""

    def __init__(self, host: PluginHost, log: EventLog):
        self.host, self.log = host, log
        self.last_step = 0
        self.ended = False
        self.muted = False  # while saving after an observer failed: write events, raise nothing

    def __call__(self, event: Event) -> None:
        self.log.write(event)
        self.last_step = getattr(event, "step", self.last_step)
        try:
            self.host.fire(_HOOK_FOR[event.type], event=event)
        except PluginError:
            if not self.muted:
                raise

    def info(self, message: str, level: str = "info") -> None:
        self(LogEvent(level=level, message=message))

    def end_once(self, event: EndEvent) -> None:
        if not self.ended:
            self.ended = True
            try:
                self(event)
            except PluginError as exc:
                # an observer failing at the very end is reported, but must not change the
                # run's own outcome (its exit code and message)
                print(f"warning: {exc} (after the run ended {event.status}; its outcome stands)",
                      file=sys.stderr)
            except (PefttoolError, OSError):
                # a full disk refusing the last line of events.jsonl must not hide the run's own error
                pass


# ----------------------------------------------------------------------------- signals


class _StopFlag:
    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


@contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    """SIGINT/SIGTERM/SIGHUP ask the loop to finish its step, checkpoint and stop.
    A second SIGINT aborts at once (KeyboardInterrupt)."""
    flag = _StopFlag()
    wanted = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals can only be handled on the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signal = signum

    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed (disk full, file too large...), or None if `exc` is no I/O error.
    The Rust writers (safetensors, tokenizers) raise plain exceptions such as
    'File too large (os error 27)' rather than OSError."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    import re

    match = re.search(r"os error (\d+)", str(exc))
    return os.strerror(int(match.group(1))) if match else None


def exit_code_for_signal(signum: int | None) -> int:
    return 128 + signum if signum else 130


# ----------------------------------------------------------------------------- run directory


def _prepare_run_dir(recipe: Recipe, resume: bool, run_dir: Path | None) -> tuple[Path, Path | None]:
    """Pick the run directory; refuse to clobber anything. Returns (dir, checkpoint to resume)."""
    if resume:
        run_dir = run_dir or _newest_run(recipe)
        if not (run_dir / EVENTS_FILE).exists():
            raise OutputError(f"{run_dir} holds no run to resume (no {EVENTS_FILE}); start it with "
                              f"pefttool run")
        from .runs import summarize

        status = summarize(run_dir).status
        if status in ("completed", "early_stopped"):
            raise OutputError(f"the run in {run_dir} already finished ({status}); its model is in "
                              f"{run_dir / MODEL_DIR}")
        if status == "running":
            raise OutputError(f"the run in {run_dir} is still running (pid alive); stop it first")
        _recover_after_kill(run_dir)
        return run_dir, latest_checkpoint(run_dir)

    run_dir = run_dir or recipe.output_dir(datetime.now().strftime("%Y%m%d-%H%M%S"))
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"output.dir: {run_dir} is a file, not a folder; choose another output.dir")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not recipe.output.overwrite:
            raise OutputError(
                f"output.dir: {run_dir} is not empty; resume it (pefttool resume {run_dir}), choose "
                f"another output.dir, or set output.overwrite = true to replace the previous run")
        for name in RUN_ARTIFACTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output.dir: cannot write to {run_dir} ({exc.strerror}); choose a "
                          f"writable output.dir") from exc
    return run_dir, None


def _recover_after_kill(run_dir: Path) -> None:
    """Undo what a kill in the middle of a write left behind, before resuming: a model/ moved
    aside while being replaced (put it back), and temporary folders (remove them)."""
    model, old = run_dir / MODEL_DIR, run_dir / f".{MODEL_DIR}-old"
    if old.is_dir() and not model.exists():
        os.replace(old, model)
    for stale in (old, run_dir / f".{MODEL_DIR}-tmp", *checkpoint_dir(run_dir).glob(".tmp-step-*")):
        shutil.rmtree(stale, ignore_errors=True)


def _newest_run(recipe: Recipe) -> Path:
    pattern = recipe.output_dir("")  # {time} → '*'
    candidates = sorted((p for p in pattern.parent.glob(pattern.name) if (p / EVENTS_FILE).exists()),
                        key=lambda p: (p / EVENTS_FILE).stat().st_mtime)
    if not candidates:
        raise OutputError(f"no earlier run of '{recipe.name}' to resume under {pattern.parent}; "
                          f"run it without --resume first")
    from .runs import summarize

    # The newest *unfinished* run: a finished run started later must not hide an interrupted one.
    unfinished = [p for p in candidates if summarize(p).status not in ("completed", "early_stopped")]
    if not unfinished:
        raise OutputError(f"every run of '{recipe.name}' under {pattern.parent} already finished "
                          f"(newest: {candidates[-1]}); run it without --resume to start a new one")
    return unfinished[-1]


def write_resolved_recipe(recipe: Recipe, run_dir: Path) -> None:
    """Save the recipe as it ran: defaults filled in, local paths absolute, output.dir = run_dir."""
    import tomli_w

    data = recipe.to_dict()
    for section, key in (("model", "path"), ("data", "train"), ("data", "eval")):
        loc = data.get(section, {}).get(key)
        if loc and not loc.startswith("package:"):
            path = recipe.resolve_path(loc)
            if path.exists():
                data[section][key] = str(path.resolve())
    data["output"]["dir"] = str(run_dir)
    tmp = run_dir / f".{RECIPE_FILE}.tmp"
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    os.replace(tmp, run_dir / RECIPE_FILE)


# ----------------------------------------------------------------------------- the run


class _TrainingRun:
    def __init__(self, recipe: Recipe, strategy: Any, options: Any, run_dir: Path,
                 emit: _Emitter, stop: _StopFlag):
        self.recipe, self.strategy, self.options = recipe, strategy, options
        self.run_dir, self.emit, self.stop = run_dir, emit, stop
        self.state = TrainState()
        self._paused_s = 0.0  # seconds spent evaluating/checkpointing since the last step event

    # -- set-up: everything before the first step

    def _setup(self, checkpoint: Path | None) -> None:
        # bitsandbytes (imported by peft, which `transformers.get_scheduler` imports) warns on
        # every CPU start about an optional kernel package: silence it before that import.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        # Accelerate warns "Removed shared tensor ... while saving" at every checkpoint of a
        # model with tied weights (most causal LMs); load_state re-ties them (resume is exact).
        logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        from .data import prepare_data
        from .models import load_model, load_tokenizer, safety_summary

        r = self.recipe
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Writing model shards" bars would garble our output
        if r.train.threads:
            torch.set_num_threads(r.train.threads)
        # Denormal floats make the first CPU steps of a real model 10-25x slower (STACK.md).
        torch.set_flush_denormal(True)
        set_seed(r.train.seed)
        use_cpu = r.train.device == "cpu" or (r.train.device == "auto" and not torch.cuda.is_available())
        self.accelerator = Accelerator(
            mixed_precision=r.train.mixed_precision,
            gradient_accumulation_steps=r.train.grad_accum,
            cpu=use_cpu,
        )
        write_resolved_recipe(r, self.run_dir)

        self.tokenizer = load_tokenizer(r)
        self.data = prepare_data(r, self.tokenizer, log=self.emit.info)
        model = load_model(r, self.strategy, self.options, label_names=self.data.label_names,
                           tokenizer=self.tokenizer)
        model = call_strategy(self.strategy, "wrap", model, r, self.options)
        self.description = call_strategy(self.strategy, "describe", model)
        self.safety = safety_summary(r)

        if not any(p.requires_grad for p in model.parameters()):
            raise TrainingError(f"strategy '{r.method.strategy}' left no parameter trainable; "
                                f"check its options")
        optimizer = build_optimizer(self.strategy, model, r, self.options)  # pefttool/optim.py
        self.sampler = EpochShuffleSampler(len(self.data.train), r.train.seed)
        # Its own generator: starting a pass over a DataLoader otherwise draws from the global
        # RNG (which dropout uses), and a resumed run starts its pass mid-epoch, after the
        # checkpoint's RNG state was restored, so its dropout masks would differ.
        train_dl = torch.utils.data.DataLoader(self.data.train, batch_size=r.train.batch_size,
                                               sampler=self.sampler, collate_fn=self.data.collate,
                                               generator=torch.Generator().manual_seed(r.train.seed))
        eval_dl = torch.utils.data.DataLoader(self.data.eval, batch_size=r.eval.batch_size,
                                              shuffle=False, collate_fn=self.data.collate)
        self.batches_per_epoch = len(train_dl)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / r.train.grad_accum)
        total = self.steps_per_epoch * r.train.epochs
        self.total_steps = min(total, r.train.max_steps) if r.train.max_steps else total
        scheduler = get_scheduler(
            {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[r.train.scheduler],
            optimizer,
            num_warmup_steps=int(r.train.warmup_ratio * self.total_steps) * self.accelerator.num_processes,
            num_training_steps=self.total_steps * self.accelerator.num_processes,
        )
        (self.model, self.optimizer, self.train_dl, self.eval_dl,
         self.scheduler) = self.accelerator.prepare(model, optimizer, train_dl, eval_dl, scheduler)
        if checkpoint is not None:
            self.accelerator.load_state(str(checkpoint))
            self.state = TrainState.from_file(checkpoint / "trainer_state.json")

    # -- the run, start to end

    def execute(self, checkpoint: Path | None, started: float) -> RunResult:
        self._setup(checkpoint)
        r, state = self.recipe, self.state
        self.emit(StartEvent(
            run_dir=str(self.run_dir), recipe=r.to_dict(), strategy=r.method.strategy,
            total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch, epochs=r.train.epochs,
            params_total=self.description["params_total"],
            params_trainable=self.description["params_trainable"],
            model_memory_mb=self.description["model_memory_mb"], device=str(self.accelerator.device),
            resumed_from_step=state.global_step, data=self.data.stats, safety=self.safety))
        if checkpoint is not None:
            self.emit.info(f"resumed from {checkpoint.name} (step {state.global_step}, epoch "
                           f"{state.epoch + 1}, batch {state.batches_done})")
        if r.eval.before_training and state.global_step == 0 and not state.history:
            self._evaluate(before=True)
        try:
            status = self._train()
        except ObserverError as exc:
            raise self._observer_failed(exc) from exc
        return self._finish(status, started)

    def _observer_failed(self, exc: ObserverError) -> ObserverError:
        """An observer raised mid-run: keep the work (a checkpoint), then fail resumably."""
        self.emit.muted = True
        try:
            self._checkpoint("stop")
        finally:
            self.emit.muted = False
        return ObserverError(f"{exc}; the run stopped at step {self.state.global_step} with a "
                             f"checkpoint: continue with pefttool resume {self.run_dir}, or set "
                             f"plugins.on_error = \"warn\" to keep training past it",
                             exc.plugin, exc.hook)

    def _train(self) -> str:
        """The loop. Returns how it ended: completed | early_stopped | interrupted."""
        r, state, acc = self.recipe, self.state, self.accelerator
        eval_every = r.eval.every_steps
        window_loss, window_steps, window_tokens, window_samples = 0.0, 0, 0, 0
        window_start, self._paused_s = time.perf_counter(), 0.0
        while state.epoch < r.train.epochs and state.global_step < self.total_steps:
            self.model.train()
            self.sampler.set_epoch(state.epoch)
            # Accelerate's loader re-sets its sampler's epoch to its own pass count on every
            # pass, and that count restarts at 0 in a resumed process: give it the real epoch,
            # or a resumed run would see another data order than an uninterrupted one.
            if hasattr(self.train_dl, "set_epoch"):
                self.train_dl.set_epoch(state.epoch)
            batches = self.train_dl
            if state.batches_done:
                batches = acc.skip_first_batches(self.train_dl, state.batches_done)
                if hasattr(batches, "set_epoch"):
                    batches.set_epoch(state.epoch)
            for batch in batches:
                with acc.accumulate(self.model):
                    batch = call_strategy(self.strategy, "prepare_batch", batch, r, self.options,
                                          training=True)
                    outputs = self.model(**batch)
                    loss = call_strategy(self.strategy, "compute_loss", outputs, batch, r,
                                         self.options, training=True)
                    loss = outputs.loss if loss is None else loss
                    # One host sync per micro-batch: it names a NaN by its step, and feeds the log.
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        self._non_finite_loss(loss_value)
                        self.optimizer.zero_grad(set_to_none=True)
                        state.batches_done += 1
                        continue
                    acc.backward(loss)
                    if acc.sync_gradients and r.train.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.model.parameters(), r.train.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                state.batches_done += 1
                window_loss += loss_value / r.train.grad_accum
                window_tokens += int(batch["attention_mask"].sum())
                window_samples += int(batch["attention_mask"].shape[0])
                if not acc.sync_gradients:
                    continue
                state.global_step += 1
                window_steps += 1
                last = state.global_step >= self.total_steps
                if state.global_step % r.train.log_every == 0 or last:
                    # Evaluations and checkpoints inside the window are not training time.
                    elapsed = max(time.perf_counter() - window_start - self._paused_s, 1e-9)
                    self._paused_s = 0.0
                    state.train_seconds += elapsed
                    state.tokens_seen += window_tokens
                    self._emit_step(window_loss / max(window_steps, 1), window_tokens / elapsed,
                                    window_samples / elapsed, elapsed / max(window_steps, 1))
                    window_loss, window_steps, window_tokens, window_samples = 0.0, 0, 0, 0
                    window_start = time.perf_counter()
                if eval_every and state.global_step % eval_every == 0 and not last:
                    if self._evaluate():
                        self._checkpoint("eval")
                        return "early_stopped"
                    self.model.train()
                if r.train.checkpoint_every and state.global_step % r.train.checkpoint_every == 0:
                    self._checkpoint("interval")
                if self.stop.requested:
                    self._checkpoint("stop")
                    return "interrupted"
                if last:
                    break
            else:
                state.epoch += 1
                state.batches_done = 0
                stop_now = self._evaluate() if not eval_every else False
                self._checkpoint("epoch")
                if stop_now:
                    return "early_stopped"
                continue
            break  # max_steps reached inside the epoch
        # Step-based evaluation, or max_steps, can end the run away from an epoch-end eval.
        if not state.history or state.history[-1]["step"] != state.global_step:
            stop_now = self._evaluate()
            self._checkpoint("end")
            if stop_now:
                return "early_stopped"
        return "completed"

    def _non_finite_loss(self, value: float) -> None:
        step = self.state.global_step + 1
        latest = latest_checkpoint(self.run_dir)
        kept = f"last good checkpoint: {latest}" if latest else "no checkpoint was written yet"
        if self.recipe.train.on_nan == "skip":
            self.state.nan_skipped += 1
            self.emit.info(f"loss is {value} at step {step}: batch skipped ({self.state.nan_skipped} "
                           f"so far)", level="warning")
            return
        raise TrainingError(f"loss is {value} at step {step} (epoch {self.state.epoch + 1}); {kept}; "
                            f"lower train.lr, or set train.on_nan = \"skip\" to skip such batches")

    def _emit_step(self, loss: float, tokens_per_s: float, samples_per_s: float,
                   sec_per_step: float) -> None:
        import psutil
        import torch

        state = self.state
        remaining = self.total_steps - state.global_step
        # Smoothed recent speed: the first steps (warm-up, denormals, caches) are not typical.
        previous = getattr(self, "_sec_per_step", None)
        self._sec_per_step = sec_per_step if previous is None else 0.7 * previous + 0.3 * sec_per_step
        gpu = None
        if torch.cuda.is_available() and self.accelerator.device.type == "cuda":
            gpu = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.emit(StepEvent(
            step=state.global_step, total_steps=self.total_steps,
            epoch=round(state.epoch + state.batches_done / self.batches_per_epoch, 4),
            loss=round(loss, 6), lr=self.scheduler.get_last_lr()[0],
            tokens_per_s=round(tokens_per_s, 1), samples_per_s=round(samples_per_s, 2),
            elapsed_s=round(state.train_seconds, 2), eta_s=round(remaining * self._sec_per_step, 1),
            rss_mb=round(psutil.Process().memory_info().rss / 2**20, 1), gpu_mem_mb=gpu))

    # -- evaluation and early stopping

    def _evaluate(self, before: bool = False) -> bool:
        """Evaluate; update best/patience; save the best model. True when it is time to stop."""
        from .evaluate import evaluate

        r, state = self.recipe, self.state
        began = time.perf_counter()
        metrics = evaluate(self.model, self.eval_dl, self.data, r, self.tokenizer, self.accelerator)
        value = metrics[r.metric]
        sign = 1 if r.higher_is_better else -1
        improved = state.best is None or sign * (value - state.best) > r.early_stopping.min_delta
        if before:
            state.before = metrics
        if improved:
            state.best, state.best_step, state.best_metrics = value, state.global_step, metrics
            state.bad_evals = 0
            self._save_model()
        else:
            state.bad_evals += 1
        epoch = round(state.epoch + state.batches_done / self.batches_per_epoch, 4)
        state.history.append({"step": state.global_step, "epoch": epoch, **metrics})
        self.emit(EvalEvent(step=state.global_step, epoch=epoch, metrics=metrics, metric=r.metric,
                            value=value, best=state.best, is_best=improved, bad_evals=state.bad_evals))
        self._paused_s += time.perf_counter() - began
        stop = (r.early_stopping.enabled and not before
                and state.bad_evals >= r.early_stopping.patience)
        if stop:
            self.emit.info(f"early stopping: {r.metric} did not improve by more than "
                           f"{r.early_stopping.min_delta} for {state.bad_evals} evaluation(s); "
                           f"best {state.best:.4f} at step {state.best_step}")
        return stop

    def _save_model(self) -> None:
        """Write the current model as the run's result, atomically (old or new, never half)."""
        if not self.accelerator.is_main_process:
            return
        target = self.run_dir / MODEL_DIR
        tmp = self.run_dir / f".{MODEL_DIR}-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            model = self.accelerator.unwrap_model(self.model)
            call_strategy(self.strategy, "save", model, tmp, self.recipe, self.options, training=True)
            self.tokenizer.save_pretrained(tmp)
            if self.data.label_names:
                (tmp / "labels.json").write_text(json.dumps(
                    {"id2label": dict(enumerate(self.data.label_names))}, indent=1))
            replace_dir(tmp, target)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = write_failure(exc)
            if reason is None:
                raise
            raise OutputError(f"cannot save the model to {target} ({reason}); free disk "
                              f"space, then resume (the previous model and checkpoints are intact)") from exc

    # -- checkpoints and the end

    def _checkpoint(self, reason: str) -> None:
        state = self.state
        began = time.perf_counter()
        if state.best_step == state.global_step:
            state.best_checkpoint = f"step-{state.global_step:07d}"
        try:
            path = save_checkpoint(self.run_dir, state, lambda d: self.accelerator.save_state(str(d)),
                                   keep=self.recipe.train.keep_checkpoints)
        except Exception as exc:
            reason = write_failure(exc)
            if reason is None:
                raise
            raise OutputError(f"cannot write a checkpoint in {self.run_dir} ({reason}); "
                              f"free disk space, then resume (earlier checkpoints are intact)") from exc
        self._paused_s += time.perf_counter() - began
        self.emit(CheckpointEvent(step=state.global_step, path=str(path), reason=reason))

    def _finish(self, status: str, started: float) -> RunResult:
        r, state = self.recipe, self.state
        duration = time.time() - started
        model_dir = self.run_dir / MODEL_DIR
        result = RunResult(
            run_dir=self.run_dir, status=status, metric=r.metric, before=state.before, best=state.best,
            best_metrics=state.best_metrics, best_step=state.best_step, steps=state.global_step,
            duration_s=duration, model_dir=model_dir if model_dir.exists() else None,
            exit_code=exit_code_for_signal(self.stop.signal) if status == "interrupted" else 0)
        metrics = {
            "status": status, "metric": r.metric, "before": state.before, "best": state.best,
            "best_step": state.best_step, "best_metrics": state.best_metrics, "history": state.history,
            "steps": state.global_step, "total_steps": self.total_steps,
            "train_seconds": round(state.train_seconds, 2),
            "tokens_per_s": round(state.tokens_seen / state.train_seconds, 1) if state.train_seconds else None,
            "nan_skipped": state.nan_skipped, "data": self.data.stats, **self.description,
        }
        (self.run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
        message = ""
        if status == "interrupted":
            message = (f"stopped by {self.stop.name} after step {state.global_step}; continue with "
                       f"pefttool resume {self.run_dir}")
        self.emit.end_once(EndEvent(
            status=status, step=state.global_step, duration_s=round(duration, 2), metric=r.metric,
            best=state.best, best_step=state.best_step,
            model_dir=str(model_dir) if model_dir.exists() else None, message=message,
            exit_code=result.exit_code))
        return result


class EpochShuffleSampler:
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size
