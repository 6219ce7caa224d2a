"""The training engine: a recipe in, a fine-tuned and evaluated model out.

Set-up (`_setup`: `_setup_runtime`, `_setup_data`, `_setup_model`, `_setup_optimizer`,
`_setup_loaders`, `_setup_scheduler`, then `_restore` on resume) is kept apart from the loop
(`_train`), which reads top to bottom: for each epoch, for each batch: step, count it in the
`StepMeter` (pefttool/meter.py), log, maybe evaluate / checkpoint / stop. The engine
reports only through events (observer hooks + `RUN_DIR/events.jsonl`) and never imports a UI.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import distributed
from .data.collate import take_counts
from .errors import DataError, OutputError, PefttoolError, PluginError, TrainingError
from .events import CheckpointEvent, EndEvent, EvalEvent, Event, EventLog, LogEvent, PhaseEvent, StartEvent, StepEvent
from .meter import StepMeter, Window
from .optim import build_optimizer
from .plugins import PluginHost, get_plugin_host
from .recipe import Recipe
from .runfolder.checkpoints import (
    STATE_FILE,
    TrainState,
    checkpoint_dir,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint_state,
    save_checkpoint,
    verify_checkpoint,
)
from .runfolder.lifecycle import open_for_resume, open_new_run, resolved_recipe_dict, write_resolved_recipe
from .runfolder.model_dir import manifest_damage, write_model_dir
from .runfolder.model_state import use_trainable_checkpoints
from .runfolder.results import SampleReplies, write_metrics
from .runfolder.rundir import MODEL_DIR, ExitCode, RunDir, RunStatus
from .runfolder.summary import summarize
from .sampling import EpochShuffleSampler, LengthGroupedSampler
from .settled import SettledRun, settle


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
    plugin_errors: list[str] = field(default_factory=list)  # observers failing in run_end


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
    settled = settle(recipe, host)  # the strategy (checked), device, checkpointing: decided once
    distributed.init(cpu=settled.on_cpu)
    main = distributed.is_main()
    checkpoint = damage = None
    # The main process decides the run directory (and the checkpoint to resume), and tells
    # the others; a refusal there is one error, which every process exits with.
    decision: tuple[Any, ...]
    if main:
        try:
            if resume:
                rundir, checkpoint, notes, damage = open_for_resume(recipe, run_dir)
                if damage is not None and distributed.world_size() > 1:
                    rundir.release()
                    raise OutputError(f"the run in {rundir.path} finished and only its model/ is "
                                      f"to be rebuilt, which takes one process: pefttool resume "
                                      f"{rundir.path} (it does not start several for that)")
            else:
                rundir, notes = open_new_run(recipe, run_dir)
            decision = ("ok", str(rundir.path), str(checkpoint) if checkpoint else None)
        except PefttoolError as exc:
            distributed.broadcast(("error", str(exc), exc.exit_code))
            raise
        distributed.broadcast(decision)
    else:
        decision = distributed.broadcast(None)
        if decision[0] == "error":
            error = PefttoolError(decision[1])
            error.exit_code = decision[2]
            raise error
        rundir, notes = RunDir(decision[1]), []
        checkpoint = Path(decision[2]) if decision[2] else None
    run_dir = rundir.path
    if damage is not None:
        assert checkpoint is not None  # a damaged finished run comes with the checkpoint to rebuild from
        return _rebuild_finished_model(settled, rundir, checkpoint, damage,
                                       host, observers, notes)
    names = [f"observer-{id(o)}" for o in observers] if main else []
    try:
        if main and not resume:
            rundir.write_marker(resolved_recipe_dict(recipe, run_dir))
        for name, obs in zip(names, observers):
            host.register(obs, name)
        log = EventLog(run_dir) if main else None
    except BaseException:
        for name in names:
            if host.pm.has_plugin(name):
                host.unregister(name)
        rundir.release()
        raise
    emitter = _Emitter(host, log, on_error=recipe.plugins.on_error)  # log None: a quiet process
    started = time.time()
    flushed_before = _denormals_flushed()
    run: _TrainingRun | None = None

    def so_far() -> dict[str, Any]:
        """What the run had reached, for an end event that cuts it short (a second Ctrl-C, a
        failure): its best evaluation and the model/ saved for it, not nulls."""
        if run is None or getattr(run, "state", None) is None:
            return {}
        model_dir = run_dir / MODEL_DIR
        return {"metric": recipe.metric, "best": run.state.best, "best_step": run.state.best_step,
                "model_dir": str(model_dir) if model_dir.is_dir() else None}

    try:
        for note in notes:
            emitter.info(note, level="warning" if note.startswith(("skipped", "took over")) else "info")
        with _stop_on_signals() as stop:
            run = _TrainingRun(settled, run_dir, emitter, stop)
            result = run.execute(checkpoint, started)
            result.plugin_errors = list(emitter.end_errors)
            return result
    except SetupStopped as exc:
        emitter.end_once(EndEvent(status=RunStatus.INTERRUPTED, step=0, duration_s=time.time() - started,
                                  message=str(exc), exit_code=exc.exit_code))
        raise
    except PefttoolError as exc:
        emitter.end_once(EndEvent(status=RunStatus.FAILED, step=emitter.last_step,
                                  duration_s=time.time() - started, message=str(exc),
                                  exit_code=exc.exit_code, **so_far()))
        raise
    except KeyboardInterrupt:
        emitter.end_once(EndEvent(status=RunStatus.INTERRUPTED, step=emitter.last_step,
                                  duration_s=time.time() - started, exit_code=ExitCode.for_signal(2),
                                  message="aborted by a second interrupt; resume from the last checkpoint",
                                  **so_far()))
        raise
    except BaseException as exc:
        emitter.end_once(EndEvent(status=RunStatus.FAILED, step=emitter.last_step,
                                  duration_s=time.time() - started,
                                  message=f"{type(exc).__name__}: {exc}", exit_code=ExitCode.INTERNAL,
                                  **so_far()))
        raise
    finally:
        if log is not None:
            log.close()
        rundir.release()
        for name in names:
            host.unregister(name)
        # The loop flushes denormals (fast CPU steps); that is process-wide CPU state, so give
        # the caller back what it had (numerical code after a run in the same process).
        if "torch" in sys.modules and _denormals_flushed() != flushed_before:
            sys.modules["torch"].set_flush_denormal(flushed_before)


def _rebuild_finished_model(settled: SettledRun, rundir: RunDir,
                            checkpoint: Path, damage: str, host: PluginHost,
                            observers: tuple[Any, ...], notes: list[str]) -> RunResult:
    """A finished run whose model/ is damaged or gone: model/ is saved again from `checkpoint`
    (the best evaluation's) as the run saved it, without training. The run stays as it ended:
    its status, history and metrics.json are untouched, and events.jsonl gains one log line
    (no start, phase or end event: the run was not resumed)."""
    ended = summarize(rundir.path).end
    assert ended is not None  # the run finished (open_for_resume): its end event is read
    names = [f"observer-{id(o)}" for o in observers]
    log = None
    try:
        for name, obs in zip(names, observers):
            host.register(obs, name)
        log = EventLog(rundir.path)
        emitter = _Emitter(host, log, on_error=settled.recipe.plugins.on_error)
        for note in notes:
            emitter.info(note, level="warning")
        # Set-up's own lines (data warnings, "saving") are the training's, not this rebuild's.
        quiet = _Emitter(host, None)
        flushed_before = _denormals_flushed()
        try:
            with _stop_on_signals() as stop:
                run = _TrainingRun(settled, rundir.path, quiet, stop)
                run.rebuild_model(checkpoint)
        finally:  # set-up flushes denormals: give the caller back its CPU state, as a run does
            if "torch" in sys.modules and _denormals_flushed() != flushed_before:
                sys.modules["torch"].set_flush_denormal(flushed_before)
        emitter.info(f"model/ was damaged ({damage}); rebuilt it from {checkpoint.name}, the best "
                     f"evaluation's checkpoint, without training (the run stays "
                     f"{ended.status.replace('_', ' ')})",
                     level="warning")
    finally:
        if log is not None:
            log.close()
        rundir.release()
        for name in names:
            if host.pm.has_plugin(name):
                host.unregister(name)
    return RunResult(run_dir=rundir.path, status=ended.status, metric=settled.recipe.metric,
                     best=ended.best, best_step=ended.best_step, steps=ended.step,
                     model_dir=rundir.model)


def cpu_threads(requested: int) -> tuple[int, str | None]:
    """torch's CPU threads for `train.threads`, and a warning when the machine is busy.

    0 means the cores that are free now: all of them on an idle machine, fewer when other
    processes keep them busy (load average above the core count), since torch's threads then
    wait for each other. Measured on 2 cores with 3 busy processes: 2 threads 32 steps/s,
    1 thread 106 (idle: 2 threads 1.7x faster than 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    if requested:
        return requested, None
    if load <= cores:
        return cores, None
    free = max(1, cores - math.ceil(load - cores))  # each unit of load over the cores takes one
    return free, (f"the machine is busy (load average {load:.1f} on {cores} cores): train.threads = 0 "
                  f"takes the {free} free core(s), not all {cores}, since busy cores make torch's "
                  f"threads wait on each other; set train.threads to choose")


def _denormals_flushed() -> bool:
    """Whether this thread's CPU flushes denormal floats to zero (torch.set_flush_denormal)."""
    return sys.float_info.min / 2 == 0.0


# ----------------------------------------------------------------------------- events


class _Emitter:
    """Writes each event to events.jsonl, then hands it to the observer hooks.

    An observer that raises: with `plugins.on_error = "warn"`, a warning and the run goes on;
    otherwise before training it stops the run at once (bad input), and during training it is
    kept in `failure` for the loop, which checkpoints and then stops (exit 3, resumable).
    """

    def __init__(self, host: PluginHost, log: EventLog | None, on_error: str = "stop"):
        self.host, self.log, self.on_error = host, log, on_error
        self.last_step = 0
        self.ended = False
        self.training = False
        self.failure: PluginError | None = None
        self.end_errors: list[str] = []
        self._warning = False

    def __call__(self, event: Event) -> None:
        self.last_step = getattr(event, "step", self.last_step)
        if self.log is None:  # not the main process: it neither writes events nor fires hooks
            return
        self.log.write(event)
        try:
            self.host.fire(event.hook, event=event)
        except PluginError as exc:
            if self.on_error == "warn":
                if not self._warning:  # a warning about a failing log hook must not loop
                    self._warning = True
                    try:
                        self.info(f"{exc} (plugins.on_error = \"warn\": the run goes on)", "warning")
                    finally:
                        self._warning = False
            elif self.training:
                self.failure = self.failure or exc
            else:
                raise

    def info(self, message: str, level: str = "info") -> None:
        self(LogEvent(level=level, message=message))

    def end_once(self, event: EndEvent) -> None:
        if not self.ended:
            self.ended = True
            self.training = False
            try:
                self(event)
            except PefttoolError as exc:
                # an observer failing at the very end must not hide the run's own outcome:
                # it is reported after it (pefttool run prints it as a warning)
                self.end_errors.append(str(exc))
            except OSError:
                pass  # a full disk refusing the last line of events.jsonl


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


class PluginFailedDuringTraining(PluginError):
    """A plugin failed mid-run: training failed (exit 3), and the run is resumable."""

    exit_code = ExitCode.TRAINING_FAILED


class SetupStopped(PefttoolError):
    """A stop signal arrived while the run was being set up: nothing was trained."""

    def __init__(self, signame: str, signum: int, phase: str):
        super().__init__(f"stopped by {signame} while {phase}, before the first training step; "
                         f"nothing was trained or saved: run the same command again to start")
        self.exit_code = ExitCode.for_signal(signum)


# ----------------------------------------------------------------------------- run directory

# Below this many eval rows a warning says the metrics are noise (an error with data.strict).
SMALL_EVAL_ROWS = 50

# ----------------------------------------------------------------------------- the run


class _TrainingRun:
    def __init__(self, settled: SettledRun, run_dir: Path,
                 emit: _Emitter, stop: _StopFlag):
        self.settled = settled
        self.recipe, self.strategy, self.options = settled.recipe, settled.strategy, settled.options
        self.run_dir, self.emit, self.stop = run_dir, emit, stop
        self.state = TrainState()
        self.meter = StepMeter()  # loss, tokens, samples and time since the last step event
        self._eval_s = 0.0    # how long the last evaluation took (the ETA counts evaluations)
        self.rebuilding = False  # only model/ is saved again (rebuild_model): recipe.toml stays
        self.sample_replies = SampleReplies(run_dir)  # eval.samples' replies, samples.jsonl

    # -- set-up: everything before the first step

    def _setup(self, checkpoint: Path | None) -> None:
        """Everything before the first step, in this order (the seed is set before the model's
        new weights are drawn); a stop signal between two steps ends the run, nothing trained."""
        self._setup_runtime()
        self._stop_if_asked("loading the tokenizer")
        self._setup_data()
        self._stop_if_asked("preparing the data")
        model = self._setup_model()
        optimizer = self._setup_optimizer(model)
        train_dl, eval_dl = self._setup_loaders()
        scheduler = self._setup_scheduler(optimizer)
        (self.model, self.optimizer, self.train_dl, self.eval_dl,
         self.scheduler) = self.accelerator.prepare(model, optimizer, train_dl, eval_dl, scheduler)
        use_trainable_checkpoints(self.accelerator)  # checkpoints hold what trains, not the frozen base
        self._setup_compile()
        if checkpoint is not None:
            self._restore(checkpoint)
        # One name for this run's temporary checkpoint folders, the same in every process.
        self._token = str(distributed.broadcast(os.getpid()))
        self._stop_if_asked("setting up training")

    def _setup_runtime(self) -> None:
        """Logging, threads, seed and the Accelerator; the resolved recipe into the run folder."""
        # bitsandbytes (imported by peft, which `transformers.get_scheduler` imports) warns on
        # every CPU start about an optional kernel package: silence it before that import.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        # Accelerate warns "Removed shared tensor ... while saving" at every checkpoint of a
        # model with tied weights (most causal LMs); load_state re-ties them (resume is exact).
        logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        r = self.recipe
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Writing model shards" bars would garble our output
        threads, busy = cpu_threads(r.train.threads)
        torch.set_num_threads(threads)
        if busy:
            self.emit.info(busy, level="warning")
        # Denormal floats make the first CPU steps of a real model 10-25x slower (measured on
        # SmolLM2-135M on CPU).
        torch.set_flush_denormal(True)
        set_seed(r.train.seed)
        from accelerate.utils import TorchDynamoPlugin

        # train.compile: Accelerate's prepare() compiles the model last (torch.compile, inductor).
        # Dynamic shapes: dynamic padding changes the sequence length (and an epoch's last
        # batch the batch size) from step to step; one graph with symbolic sizes serves them
        # all, where static shapes would recompile for each new size until dynamo gives up.
        # Random ops (dropout) run as eager's kernels (inductor's `fallback_random`): inductor's
        # own in-kernel RNG would draw other dropout masks than an uncompiled run, so losses
        # would not match it, nor would a run resumed with compile switched on or off.
        # Always passed explicitly, so ACCELERATE_DYNAMO_* variables never overrule the recipe.
        dynamo = TorchDynamoPlugin(backend="inductor" if r.train.compile else "no",
                                   dynamic=True if r.train.compile else None,
                                   options={"fallback_random": True} if r.train.compile else None)
        self.accelerator = Accelerator(
            mixed_precision=r.train.mixed_precision,
            gradient_accumulation_steps=r.train.grad_accum,
            cpu=self.settled.on_cpu,
            dynamo_plugin=dynamo,
        )
        # Accelerate's state is shared by the whole process and keeps the *first* Accelerator's
        # dynamo plugin; one process may run several recipes (tests, the Python API, the TUI).
        self.accelerator.state.dynamo_plugin = dynamo
        self.main = self.accelerator.is_main_process
        if self.main and not self.rebuilding:
            write_resolved_recipe(r, self.run_dir)

    def _setup_data(self) -> None:
        """The tokenizer, then the encoded train and eval sets (warned about when too small)."""
        from .data import prepare_data
        from .models import load_tokenizer
        from .tasks import get_task

        r = self.recipe
        self.tokenizer = load_tokenizer(r)
        self._stop_if_asked("loading the tokenizer")
        with self.accelerator.main_process_first():  # one process fills the data cache
            self.data = prepare_data(r, self.tokenizer, log=self.emit.info)
        get_task(r).check_data(r, self.data)  # e.g. AUROC needs both labels in the eval set
        self._warn_about_small_data()

    def _setup_model(self) -> Any:
        """The base model, wrapped by the strategy (adapters, quantization...), described."""
        from .models import enable_gradient_checkpointing, load_model, remote_code_warning, safety_summary

        r = self.recipe
        warning = remote_code_warning(r)
        if warning:
            self.emit.info(warning, level="warning")
        model = load_model(r, self.strategy, self.options, label_names=self.data.label_names,
                           tokenizer=self.tokenizer)
        self._stop_if_asked("loading the model")
        model = self.strategy.wrap(model, r, self.options)
        if r.model.adapter is not None:
            self._continued_adapter(model)
        self.checkpointing = False
        if self.settled.gradient_checkpointing:
            import warnings

            with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
                self.checkpointing = enable_gradient_checkpointing(model)
            self.emit.info(f"gradient checkpointing: on ({self.settled.gradient_checkpointing_why}; "
                           f"activations recomputed in backward)" if self.checkpointing
                           else "gradient checkpointing: this model does not support it; off",
                           level="info" if self.checkpointing else "warning")
        self._setup_loss(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.trainable_dtype = str(trainable[0].dtype).removeprefix("torch.") if trainable else ""
        self.description = self.strategy.describe(model)
        self.safety = safety_summary(r)
        if not any(p.requires_grad for p in model.parameters()):
            raise TrainingError(f"strategy '{r.method.strategy}' left no parameter trainable; "
                                f"check its options")
        if r.data.packing:  # refuse a model that would attend across packed examples
            from .data.collate import check_packed_attention

            check_packed_attention(model)
        return model

    def _continued_adapter(self, model: Any) -> None:
        """model.adapter: the strategy must have loaded it (adapters.continue_adapter); say
        which adapter trains on, and that the [method] LoRA keys came from it."""
        from .adapters import CONTINUED_FROM

        folder = getattr(model, CONTINUED_FROM, None)
        if folder is None:   # (settled.check_adapter refused strategies that do not say they do)
            raise self.strategy.problem(
                "sets continues_adapter, but its wrap did not load model.adapter (pefttool.adapters."
                "add_lora does)")
        config = model.peft_config["default"]
        self.emit.info(f"continuing the adapter in {folder} (r {getattr(config, 'r', '?')}, alpha "
                       f"{getattr(config, 'lora_alpha', '?')}, its own targets: the [method] adapter "
                       f"keys do not apply); a frozen copy of it is the reference")

    def _setup_loss(self, model: Any) -> None:
        """train.loss_chunks: the next-token loss through the chunked head (pefttool/losses.py),
        in training and evaluation alike, when the settled run asks for it and the model has
        a head to chunk."""
        chunks = self.settled.loss_chunks
        if not chunks:
            if self.settled.task.vocabulary_loss:
                self.emit.info(f"loss: the model's own, over the full logits ({self.settled.loss_chunks_why})")
            return
        from .losses import MIN_CHUNK_TOKENS, set_loss_chunks, why_not_chunked

        why_not = why_not_chunked(model)
        if why_not:
            self.emit.info(f"loss: the model's own, over the full logits ({why_not}; "
                           f"train.loss_chunks = {chunks} does not apply)", level="warning")
            return
        set_loss_chunks(model, chunks)
        self.emit.info(f"loss: from the hidden states in up to {chunks} chunks of label tokens "
                       f"(at least {MIN_CHUNK_TOKENS} each), never the full logits "
                       f"({self.settled.loss_chunks_why})")

    def _setup_optimizer(self, model: Any) -> Any:
        return build_optimizer(self.strategy, model, self.recipe, self.options)  # pefttool/optim.py

    def _setup_loaders(self) -> tuple[Any, Any]:
        """The train and eval loaders, and the run's length in steps."""
        import torch

        r = self.recipe
        train_collate: Callable[[Any], dict[str, Any]]   # a list of rows (of packed rows) → a batch
        train_set, train_collate = self.data.train, self.data.collate
        if r.data.packing:  # a batch is batch_size rows of several examples (data/collate.py)
            from .data.collate import pack_for_training

            train_set, train_collate = pack_for_training(self.data.train, r, self.data.pad_id)
            self.emit.info(f"packing: {len(self.data.train)} examples in {len(train_set)} rows of "
                           f"up to {r.data.max_length} tokens")
        if r.data.group_by_length:
            lengths = [len(ids) for ids in self.data.train["input_ids"]]
            self.sampler: EpochShuffleSampler = LengthGroupedSampler(lengths, r.train.batch_size, r.train.seed)
        else:
            self.sampler = EpochShuffleSampler(len(train_set), r.train.seed)
        # Its own generator: starting a pass over a DataLoader otherwise draws from the global
        # RNG (which dropout uses), and a resumed run starts its pass mid-epoch, after the
        # checkpoint's RNG state was restored, so its dropout masks would differ.
        train_dl = torch.utils.data.DataLoader(train_set, batch_size=r.train.batch_size,
                                               sampler=self.sampler, collate_fn=train_collate,
                                               generator=torch.Generator().manual_seed(r.train.seed))
        eval_dl = torch.utils.data.DataLoader(self.data.eval, batch_size=r.eval.batch_size,
                                              shuffle=False, collate_fn=self.data.collate)
        length = self.settled.length(len(train_set), self.accelerator.num_processes)  # as plan counts it
        self.batches_per_epoch = length.batches_per_process
        self.steps_per_epoch, self.total_steps = length.steps_per_epoch, length.total_steps
        return train_dl, eval_dl

    def _setup_scheduler(self, optimizer: Any) -> Any:
        from transformers import get_scheduler

        r, processes = self.recipe, self.accelerator.num_processes
        return get_scheduler(
            {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[r.train.scheduler],
            optimizer,
            num_warmup_steps=int(r.train.warmup_ratio * self.total_steps) * processes,
            num_training_steps=self.total_steps * processes,
        )

    def _setup_compile(self) -> None:
        """train.compile: `self.model` is the compiled module that trains; `self.plain_model`
        the same module uncompiled (same parameters), which evaluates, generates and saves:
        compiling eval and generate would only add compile time (other shapes, no grad), and
        the plain module's state has no `_orig_mod.` prefixes."""
        from accelerate.utils import is_compiled_module

        compiled = is_compiled_module(self.model)
        if compiled != self.recipe.train.compile:  # Accelerate's state not what we set
            raise TrainingError(f"train.compile is {str(self.recipe.train.compile).lower()} but the "
                                f"prepared model is {'' if compiled else 'not '}compiled")
        self.plain_model = self.model._orig_mod if compiled else self.model
        self._compile_pending = compiled
        if compiled:
            self._graphs_before = self._dynamo_graphs()
            self.emit.info("torch.compile: on (inductor, dynamic shapes): the first step compiles "
                           "the model (tens of seconds or more); evaluation and generation run "
                           "uncompiled")

    @staticmethod
    def _dynamo_graphs() -> tuple[int, int]:
        """(graphs compiled, graph breaks) so far in this process (torch._dynamo's counters)."""
        from torch._dynamo.utils import counters

        return (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()))

    def _restore(self, checkpoint: Path) -> None:
        """A resumed run: model, optimizer, scheduler, RNG and loop state from the checkpoint."""
        load_checkpoint_state(self.accelerator, checkpoint)
        self.state = TrainState.from_file(checkpoint / STATE_FILE)
        if self.state.processes != self.accelerator.num_processes:
            raise OutputError(
                f"the run in {self.run_dir} was trained by {self.state.processes} process(es) "
                f"and this resume has {self.accelerator.num_processes}; the data order and "
                f"the optimizer's sharding depend on it: resume with --processes "
                f"{self.state.processes}")
        self._repair_model_dir(checkpoint)

    def _across_processes(self, window: Window) -> Window:
        """The loss is the mean over processes, tokens and samples their total."""
        if self.accelerator.num_processes == 1:
            return window
        import torch

        t = torch.tensor([window.loss, float(window.tokens), float(window.samples)],
                         dtype=torch.float64, device=self.accelerator.device)
        t = self.accelerator.reduce(t, reduction="sum")
        return window.with_totals(float(t[0]) / self.accelerator.num_processes, int(t[1]), int(t[2]))

    def _stop_if_asked(self, phase: str) -> None:
        """A stop signal during set-up ends the run here: before the first step, with nothing
        half-written (the loop's own checks only start with the first step)."""
        if self.stop.requested:
            assert self.stop.signal is not None  # `requested`: a signal was recorded
            raise SetupStopped(self.stop.name, self.stop.signal, phase)

    def _warn_about_small_data(self) -> None:
        """Tiny or one-sided data trains without complaint and reports meaningless metrics;
        say so (and stop, with data.strict = true)."""
        from .tasks import get_task

        r, stats = self.recipe, self.data.stats
        problems = []
        n_eval = len(self.data.eval)
        coarse = get_task(r).metrics[r.metric].share_of_rows
        if n_eval < SMALL_EVAL_ROWS and (coarse or r.early_stopping.enabled):
            # A share of rows moves in steps of 1/rows; a continuous metric (a loss) does not,
            # but early stopping on so few rows still follows their noise.
            how = (f"{r.metric} moves in steps of {1 / max(n_eval, 1):.2f}" if coarse
                   else f"{r.metric} is noisy on so few rows")
            stops = " and early stopping follows noise" if r.early_stopping.enabled else ""
            problems.append(f"the eval set has only {n_eval} row(s), so {how}{stops}; add rows, or "
                            f"raise data.eval_fraction")
        counts = stats.get("train", {}).get("label_counts") or {}
        empty = [name for name, n in counts.items() if n == 0]
        if empty:
            problems.append(f"label(s) {', '.join(map(repr, empty))} in task.labels have no training "
                            f"rows, so the model cannot learn them; check data.label_column and "
                            f"task.labels")
        for problem in problems:
            if r.data.strict:
                raise DataError(f"data.strict: {problem}")
            self.emit.info(problem, level="warning")

    def rebuild_model(self, checkpoint: Path) -> None:
        """A finished run's model/, saved again from `checkpoint` (see `final_model_checkpoint`),
        through the same set-up and `_save_model` as the run itself; nothing is trained."""
        self.rebuilding = True
        self._setup(None)
        load_checkpoint_state(self.accelerator, checkpoint)
        self.state = TrainState.from_file(checkpoint / STATE_FILE)
        self._save_model()

    def _repair_model_dir(self, checkpoint: Path) -> None:
        """model/ holds the best model so far; a damaged one (checked against the manifest
        written with it) is rebuilt from the best checkpoint, or moved aside with a warning."""
        if not self.main:
            return
        model_dir = self.run_dir / MODEL_DIR
        damage = manifest_damage(model_dir) if model_dir.is_dir() else None
        if damage is None:
            return
        # The checkpoint of the best step holds model/'s weights. Not `best_checkpoint`: that
        # names the last checkpoint written at a best step, an older best when the newest best
        # was found by an `eval.every_steps` evaluation with no checkpoint at its step.
        best = self.state.best_step
        best_dir = checkpoint_dir(self.run_dir) / checkpoint_name(best) if best is not None else None
        if best_dir is not None and best_dir.is_dir() and verify_checkpoint(best_dir) is None:
            load_checkpoint_state(self.accelerator, best_dir)
            self._save_model()
            load_checkpoint_state(self.accelerator, checkpoint)
            self.emit.info(f"model/ was damaged ({damage}); rebuilt it from the best checkpoint "
                           f"{best_dir.name}", level="warning")
            return
        aside = self.run_dir / f"model.damaged-{int(time.time())}"
        os.replace(model_dir, aside)
        self.state.best = self.state.best_step = None
        self.emit.info(f"model/ was damaged ({damage}) and no intact best checkpoint is left; moved "
                       f"it to {aside.name}, and the next evaluation saves a new best model",
                       level="warning")

    # -- the run, start to end

    def execute(self, checkpoint: Path | None, started: float) -> RunResult:
        self.emit(PhaseEvent(phase="loading"))
        self._setup(checkpoint)
        r, state = self.recipe, self.state
        self.emit(StartEvent(
            run_dir=str(self.run_dir), recipe=r.to_dict(), strategy=r.method.strategy,
            total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch, epochs=r.train.epochs,
            params_total=self.description["params_total"],
            params_trainable=self.description["params_trainable"],
            model_memory_mb=self.description["model_memory_mb"], device=str(self.accelerator.device),
            resumed_from_step=state.global_step, data=self.data.stats, safety=self.safety,
            processes=self.accelerator.num_processes, gradient_checkpointing=self.checkpointing,
            dtype=self.trainable_dtype))
        if checkpoint is not None:
            self.emit.info(f"resumed from {checkpoint.name} (step {state.global_step}, epoch "
                           f"{state.epoch + 1}, batch {state.batches_done})")
        if r.eval.before_training and state.global_step == 0 and not state.history:
            self._evaluate(before=True)
        self.emit.training = self.strategy.during_training = True
        status = self._train()
        if self.recipe.train.compile:
            graphs, breaks = (a - b for a, b in zip(self._dynamo_graphs(), self._graphs_before))
            hint = ("; each break ends a fused graph (gradient checkpointing causes them, for one): "
                    "TORCH_LOGS=graph_breaks names them") if breaks else ""
            self.emit.info(f"torch.compile: {graphs} graph(s) compiled in this run, {breaks} graph "
                           f"break(s){hint}")
        if self.emit.failure:
            self._stop_for_plugin()
        self.emit.training = False
        return self._finish(status, started)

    def _stop_for_plugin(self) -> None:
        """An observer failed during training (plugins.on_error = "stop"): the checkpoint is
        written; stop with the plugin named, resumable once it is fixed or removed."""
        error = self.emit.failure
        raise PluginFailedDuringTraining(
            f"{error}; the run is saved at step {self.state.global_step}: fix the plugin, skip it "
            f"(PEFTTOOL_PLUGINS=-NAME) or set plugins.on_error = \"warn\", then pefttool resume "
            f"{self.run_dir}")

    def _stopped_after_the_end(self) -> bool:
        """A stop asked for during the final evaluation or save: the run is complete (the
        evaluation finished and the model is saved), and the exit code reports the signal."""
        return self.stop.requested

    def _train(self) -> str:
        """The loop. Returns how it ended: completed | early_stopped | interrupted."""
        from .tasks import get_task

        r, state, acc, meter = self.recipe, self.state, self.accelerator, self.meter
        task = get_task(r)
        eval_every = r.eval.every_steps
        began = time.perf_counter()
        compiled_window = False
        meter.start_window()
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
                tokens, samples = take_counts(batch)  # real tokens (padding and packing aside)
                with acc.accumulate(self.model):
                    batch = self.strategy.prepare_batch(batch, r, self.options)
                    loss = task.training_loss(self.model, batch, r)
                    if loss is None:
                        outputs = self.model(**batch)
                        loss = self.strategy.compute_loss(outputs, batch, r, self.options)
                        loss = outputs.loss if loss is None else loss
                        # The logits (batch x length x vocab floats: 768 MiB for SmolLM2 at
                        # 8 x 512) must not live through backward, nor the next step's forward.
                        del outputs
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
                meter.add_batch(loss_value, tokens=tokens, samples=samples)
                if not acc.sync_gradients:
                    continue
                meter.end_step()
                state.global_step += 1
                if self._compile_pending:
                    self._compile_pending = False
                    compiled_window = True  # its speed is not the run's: kept out of the ETA
                    self.emit.info(f"torch.compile: the first step took {time.perf_counter() - began:.1f} s "
                                   f"(compiling); the next ones run compiled")
                last = state.global_step >= self.total_steps
                if state.global_step % r.train.log_every == 0 or last:
                    # Evaluations and checkpoints inside the window are not training time.
                    # tokens: every process's (the run's count), not the main process's share
                    window = self._across_processes(meter.close_window())
                    state.train_seconds += window.seconds
                    state.tokens_seen += window.tokens
                    self._emit_step(window)
                    if compiled_window:
                        compiled_window = False
                        meter.forget_speed()
                    meter.start_window()
                if eval_every and state.global_step % eval_every == 0 and not last:
                    if self._evaluate():
                        self._checkpoint("eval")
                        return "early_stopped"
                    self.model.train()
                if r.train.checkpoint_every and state.global_step % r.train.checkpoint_every == 0:
                    self._checkpoint("interval")
                # Every process stops after the same step (a signal may reach one first).
                if distributed.any_process(self.stop.requested or self.emit.failure is not None):
                    self._checkpoint("stop")
                    if self.emit.failure:
                        self._stop_for_plugin()
                    return "interrupted"
                if last:
                    break
            else:
                state.epoch += 1
                state.batches_done = 0
                stop_now = self._evaluate() if not eval_every else False
                self._checkpoint("epoch")
                more = state.epoch < r.train.epochs and state.global_step < self.total_steps
                if stop_now and more:   # (after the last epoch nothing is stopped early)
                    return "early_stopped"
                # A signal during the epoch's evaluation or checkpoint stops here, at that
                # checkpoint, not after one more step (the last epoch ends the run anyway).
                if more and distributed.any_process(self.stop.requested or self.emit.failure is not None):
                    if self.emit.failure:
                        self._stop_for_plugin()
                    return "interrupted"
                continue
            break  # max_steps reached inside the epoch
        # Step-based evaluation, or max_steps, can end the run away from an epoch-end eval.
        # Every step trained: the run completed, whatever early stopping would have said.
        if not state.history or state.history[-1]["step"] != state.global_step:
            self._evaluate()
            self._checkpoint("end")
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

    def _emit_step(self, window: Window) -> None:
        import psutil

        state = self.state
        remaining = self.total_steps - state.global_step
        gpu, gpu_total, gpu_util = gpu_figures(self.accelerator.device)
        self.emit(StepEvent(
            step=state.global_step, total_steps=self.total_steps,
            epoch=round(state.epoch + state.batches_done / self.batches_per_epoch, 4),
            loss=round(window.mean_loss, 6), lr=self._scheduled_lr(), lrs=list(self.scheduler.get_last_lr()),
            tokens_per_s=round(window.tokens_per_s, 1), samples_per_s=round(window.samples_per_s, 2),
            elapsed_s=round(state.train_seconds, 2),
            eta_s=round(remaining * self.meter.sec_per_step + self._evals_left() * self._eval_s, 1),
            rss_mb=round(psutil.Process().memory_info().rss / 2**20, 1), gpu_mem_mb=gpu,
            gpu_total_mb=gpu_total, gpu_util=gpu_util))

    def _scheduled_lr(self) -> float:
        """train.lr as the schedule has it now: the first group's rate over its own start rate
        is the schedule's factor (every group is scaled alike), whatever lr that group has."""
        group, base = self.optimizer.param_groups[0], self.recipe.train.lr
        start = group.get("initial_lr") or group["lr"]
        if start == base or not start:
            return float(group["lr"]) if start else base
        return base * (group["lr"] / start)

    def _evals_left(self) -> int:
        """Evaluations still to come (for the ETA): every `eval.every_steps`, or each epoch's
        end, and the final one."""
        step, total = self.state.global_step, self.total_steps
        if step >= total:
            return 0
        every = self.recipe.eval.every_steps
        if every:
            return (total - 1) // every - step // every + 1
        return -(-(total - step) // max(self.steps_per_epoch, 1))

    # -- evaluation and early stopping

    def _evaluate(self, before: bool = False) -> bool:
        """Evaluate; update best/patience; save the best model. True when it is time to stop."""
        from .evaluate import evaluate

        r, state = self.recipe, self.state
        began = time.perf_counter()
        loader = _PhaseProgress(self.eval_dl, self.emit, "evaluating", state.global_step)
        with self._own_rng():
            metrics = evaluate(self.plain_model, loader, self.data, r, self.tokenizer, self.accelerator)
        value = metrics[r.metric]
        sign = 1 if r.higher_is_better else -1
        # The untrained baseline is "before", never "best": the first trained evaluation is the
        # first best, so an interrupted run never reports (or saves) the untrained model as best.
        improved = not before and (state.best is None
                                   or sign * (value - state.best) > r.early_stopping.min_delta)
        if before:
            state.before = metrics
        elif improved:
            state.best, state.best_step, state.best_metrics = value, state.global_step, metrics
            state.bad_evals = 0
            self._save_model()
        if before or improved:
            with self._own_rng():
                self._write_samples("before" if before else "after")
        if not before and not improved:
            state.bad_evals += 1
        epoch = round(state.epoch + state.batches_done / self.batches_per_epoch, 4)
        state.history.append({"step": state.global_step, "epoch": epoch, **metrics})
        self.emit(EvalEvent(step=state.global_step, epoch=epoch, metrics=metrics, metric=r.metric,
                            value=value, best=state.best, is_best=improved, bad_evals=state.bad_evals,
                            before=before))
        self._eval_s = time.perf_counter() - began
        self.meter.pause(self._eval_s)
        stop = (r.early_stopping.enabled and not before
                and state.bad_evals >= r.early_stopping.patience)
        if stop:
            self.emit.info(f"early stopping: {r.metric} did not improve by more than "
                           f"{r.early_stopping.min_delta} for {state.bad_evals} evaluation(s); "
                           f"best {state.best:.4f} at step {state.best_step}")
        return stop

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """A pass outside training (evaluation, sample replies) works on a copy of the RNG
        state: starting a DataLoader pass draws a seed from the global generator, and sampled
        replies draw many, so without this an evaluation before training (or eval.samples)
        would change every later dropout mask, and the run's losses with it."""
        import torch

        device = self.accelerator.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                   device_type=device.type if device.type == "cuda" else "cuda"):
            yield

    def _write_samples(self, when: str) -> None:
        """eval.samples: replies to held-out prompts before training and at the best evaluation,
        side by side in samples.jsonl (rewritten atomically)."""
        if not self.recipe.eval.samples or not self.accelerator.is_main_process:
            return
        from .evaluate import samples

        rows = samples(self.plain_model, self.data, self.recipe, self.tokenizer, self.accelerator)
        if rows:
            self.sample_replies.record(rows, when, self.state.global_step)

    def _save_model(self) -> None:
        """Write the current model as the run's result, atomically (old or new, never half)."""
        if not self.accelerator.is_main_process:
            return
        self.emit(PhaseEvent(phase="saving", step=self.state.global_step))
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

        def save(folder: Path) -> None:
            self.strategy.save(model, folder, self.recipe, self.options)
            self.tokenizer.save_pretrained(folder)
            if self.data.label_names:
                (folder / "labels.json").write_text(json.dumps(
                    {"id2label": dict(enumerate(self.data.label_names))}, indent=1))

        write_model_dir(self.run_dir, save)

    # -- checkpoints and the end

    def _checkpoint(self, reason: str) -> None:
        state = self.state
        began = time.perf_counter()
        if state.best_step == state.global_step:
            state.best_checkpoint = checkpoint_name(state.global_step)
        self.emit(PhaseEvent(phase="checkpointing", step=state.global_step))
        state.processes = self.accelerator.num_processes
        path = save_checkpoint(self.run_dir, state, lambda d: self.accelerator.save_state(str(d)),
                               keep=self.recipe.train.keep_checkpoints, main=self.main,
                               token=self._token, barrier=self.accelerator.wait_for_everyone)
        self.meter.pause(time.perf_counter() - began)
        self.emit(CheckpointEvent(step=state.global_step, path=str(path), reason=reason))

    def _finish(self, status: str, started: float) -> RunResult:
        r, state = self.recipe, self.state
        duration = time.time() - started
        model_dir = self.run_dir / MODEL_DIR
        result = RunResult(
            run_dir=self.run_dir, status=status, metric=r.metric, before=state.before, best=state.best,
            best_metrics=state.best_metrics, best_step=state.best_step, steps=state.global_step,
            duration_s=duration, model_dir=model_dir if model_dir.exists() else None,
            exit_code=ExitCode.for_signal(self.stop.signal) if self._stopped_after_the_end() else 0)
        metrics = {
            "status": status, "metric": r.metric, "before": state.before, "best": state.best,
            "best_step": state.best_step, "best_metrics": state.best_metrics, "history": state.history,
            "steps": state.global_step, "total_steps": self.total_steps,
            "train_seconds": round(state.train_seconds, 2),
            "tokens_per_s": round(state.tokens_seen / state.train_seconds, 1) if state.train_seconds else None,
            "nan_skipped": state.nan_skipped, "data": self.data.stats, **self.description,
        }
        if self.main:
            write_metrics(self.run_dir, metrics)
        message = ""
        if status == RunStatus.INTERRUPTED:
            message = (f"stopped by {self.stop.name} after step {state.global_step}; continue with "
                       f"pefttool resume {self.run_dir}")
        elif self._stopped_after_the_end():
            message = (f"{self.stop.name} arrived during the final evaluation: it finished and the "
                       f"model is saved; the run is {status.replace('_', ' ')}")
        self.emit.end_once(EndEvent(
            status=status, step=state.global_step, duration_s=round(duration, 2), metric=r.metric,
            best=state.best, best_step=state.best_step,
            model_dir=str(model_dir) if model_dir.exists() else None, message=message,
            exit_code=result.exit_code))
        return result


class _PhaseProgress:
    """An eval loader that reports its progress as PhaseEvents: when it begins, then at most
    about once a second (a UI shows "evaluating 12/40" instead of looking frozen)."""

    def __init__(self, loader: Any, emit: _Emitter, phase: str, step: int, every_s: float = 1.0):
        self.loader, self.emit, self.phase, self.step, self.every_s = loader, emit, phase, step, every_s

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        try:
            total = len(self.loader)
        except TypeError:
            total = 0
        self.emit(PhaseEvent(phase=self.phase, step=self.step, done=0, total=total))
        shown = time.monotonic()
        for done, batch in enumerate(self.loader, 1):
            yield batch
            if time.monotonic() - shown >= self.every_s:
                shown = time.monotonic()
                self.emit(PhaseEvent(phase=self.phase, step=self.step, done=done, total=total))


def gpu_figures(device: Any) -> tuple[float | None, float | None, float | None]:
    """(peak MiB torch allocated, the GPU's MiB, its utilisation %) on a CUDA device; Nones
    elsewhere. Utilisation comes from NVML (`torch.cuda.utilization`, which needs pynvml):
    None where it cannot be read."""
    import torch

    if getattr(device, "type", None) != "cuda" or not torch.cuda.is_available():
        return None, None, None
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    total = round(torch.cuda.get_device_properties(device).total_memory / 2**20, 1)
    try:
        util: float | None = float(torch.cuda.utilization(device))
    except Exception:   # no pynvml, or NVML refuses (a MIG slice, a container): not shown
        util = None
    return peak, total, util
