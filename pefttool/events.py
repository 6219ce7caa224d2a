"""What a run reports: typed events, and their one-JSON-object-per-line form.

The engine creates these and hands each to the observer hooks and to `RUN_DIR/events.jsonl`.
Every consumer (the headless reporter, the TUI, plugins, `pefttool runs`) reads the same
events, so nothing downstream ever needs to reach into the engine. Each line carries `type`
and `time` (Unix seconds); unknown fields are ignored by readers so events can grow.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator

from .runfolder.rundir import EVENTS_FILE, open_append  # noqa: E402  (the run directory's names live in one place)


@dataclass
class Event:
    """Base of all events; `type` names the kind in JSONL, `hook` the observer hook that
    receives it (see hookspecs.py)."""

    type: ClassVar[str] = "event"
    hook: ClassVar[str] = ""
    time: float = field(default_factory=time.time, kw_only=True)

    def to_json(self) -> str:
        return json.dumps({"type": self.type, **asdict(self)}, default=str)


@dataclass
class StartEvent(Event):
    """The run is set up and about to train (or resume)."""

    type: ClassVar[str] = "start"
    hook: ClassVar[str] = "pefttool_run_start"
    run_dir: str
    recipe: dict[str, Any]            # the resolved recipe, defaults filled in
    strategy: str
    total_steps: int                  # optimizer steps planned for the whole run
    steps_per_epoch: int
    epochs: int
    params_total: int
    params_trainable: int
    model_memory_mb: float
    device: str
    pid: int = field(default_factory=os.getpid)
    resumed_from_step: int = 0
    data: dict[str, Any] = field(default_factory=dict)   # cleaning counts per split
    safety: dict[str, Any] = field(default_factory=dict)  # allow_pickle, trust_remote_code
    processes: int = 1                # training processes (DDP/FSDP ranks); 1 = a single process
    gradient_checkpointing: bool = False  # activations recomputed in backward (on and supported)
    dtype: str = ""                   # the trainable parameters' dtype (float32, bfloat16...)


@dataclass
class StepEvent(Event):
    """An optimizer step finished (emitted every `train.log_every` steps, and the last one)."""

    type: ClassVar[str] = "step"
    hook: ClassVar[str] = "pefttool_step_end"
    step: int
    total_steps: int
    epoch: float                      # fractional: 1.5 = halfway through the second epoch
    loss: float                       # mean train loss over the steps since the last event
    lr: float                         # train.lr as the schedule has it now (warm-up, decay)
    tokens_per_s: float
    samples_per_s: float
    elapsed_s: float
    eta_s: float
    rss_mb: float
    gpu_mem_mb: float | None = None   # peak allocated by torch on the run's GPU (None: no GPU)
    gpu_total_mb: float | None = None  # that GPU's memory
    gpu_util: float | None = None      # its utilisation in % (NVML, where pynvml is installed)
    # each optimizer parameter group's own rate (a strategy's param_groups may give groups
    # their own lr; the schedule scales each), in group order
    lrs: list[float] | None = None


@dataclass
class EvalEvent(Event):
    """An evaluation finished; `metrics` holds every metric, `metric` names the one that rules.

    `before` marks the baseline evaluation before training: it is shown as "before", never
    counts as the best (`is_best` false, `best` None until a training evaluation)."""

    type: ClassVar[str] = "eval"
    hook: ClassVar[str] = "pefttool_eval_end"
    step: int
    epoch: float
    metrics: dict[str, float]
    metric: str
    value: float
    best: float | None                # the best so far during training (None: only the baseline)
    is_best: bool
    bad_evals: int                    # evaluations in a row without improvement
    before: bool = False              # the baseline evaluation, before any training step


@dataclass
class CheckpointEvent(Event):
    """A checkpoint was written completely (atomically) and can be resumed from."""

    type: ClassVar[str] = "checkpoint"
    hook: ClassVar[str] = "pefttool_checkpoint"
    step: int
    path: str
    reason: str = "interval"          # interval | epoch | stop | best


@dataclass
class LogEvent(Event):
    """A human-readable message worth showing (data cleaning counts, warnings, decisions)."""

    type: ClassVar[str] = "log"
    hook: ClassVar[str] = "pefttool_log"
    level: str                        # info | warning | error
    message: str


@dataclass
class PhaseEvent(Event):
    """What the run is doing between training steps, so a UI need not look frozen: `loading`
    (model and data), `evaluating` (`done` of `total` eval batches; sent when it begins, then
    at most about once a second), `checkpointing`, `saving` (the model). The next step or
    end event means the phase is over. Observers get it through `pefttool_phase`."""

    type: ClassVar[str] = "phase"
    hook: ClassVar[str] = "pefttool_phase"
    phase: str                        # loading | evaluating | checkpointing | saving
    step: int = 0
    done: int = 0
    total: int = 0
    pid: int = field(default_factory=os.getpid)   # a resumed run's new process, before its start


@dataclass
class EndEvent(Event):
    """The run is over; `status` says how, and what to do next if it was not completed."""

    type: ClassVar[str] = "end"
    hook: ClassVar[str] = "pefttool_run_end"
    status: str          # completed | early_stopped | interrupted | failed
    step: int
    duration_s: float
    metric: str | None = None
    best: float | None = None
    best_step: int | None = None
    model_dir: str | None = None
    message: str = ""
    exit_code: int = 0


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (StartEvent, StepEvent, EvalEvent, CheckpointEvent, LogEvent, PhaseEvent,
                              EndEvent)
}


def from_dict(data: Any) -> Event | None:
    """Rebuild an event from its JSON form; None for anything that is not one (an unknown
    type from a newer writer, a damaged line: a list, missing fields)."""
    if not isinstance(data, dict):
        return None
    cls = EVENT_TYPES.get(data.get("type", "")) if isinstance(data.get("type"), str) else None
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    try:
        event = cls(**{k: v for k, v in data.items() if k in names})
    except TypeError:  # a required field missing
        return None
    if not isinstance(event.time, (int, float)) or isinstance(event.time, bool):
        return None   # a time that is not a number would break every reader's arithmetic
    return event


class EventLog:
    """Appends events to `events.jsonl`, one flushed line each, so a reader never sees half."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / EVENTS_FILE
        self._fh = open_append(self.path)  # a link there: refused (ELOOP), never followed

    def write(self, event: Event) -> None:
        self._fh.write(event.to_json() + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_events(path: Path) -> Iterator[Event]:
    """Every complete event in a file (a partly written last line is skipped)."""
    follower = EventFollower(path)
    yield from follower.poll()


class LineTail:
    """New complete lines of a growing file; a partly written last line waits for the next
    poll. Shared by the events follower and the TUI's stderr pane."""

    def __init__(self, path: Path, chunk: int = -1):
        self.path = Path(path)
        self.chunk = chunk
        self._offset = 0
        self._partial = b""
        self.irregular = False  # the path is a pipe, device or socket: never opened

    @property
    def offset(self) -> int:
        """Bytes of the file read so far."""
        return self._offset

    def poll(self) -> list[bytes]:
        # Only a regular file (through any link): opening a FIFO blocks until a writer comes,
        # and /dev/zero never ends. Anything else reads as no lines, and `irregular` says why.
        try:
            self.irregular = not stat.S_ISREG(os.stat(self.path).st_mode)
        except OSError:
            return []
        if self.irregular:
            return []
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read(self.chunk)
        except OSError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return lines


class EventFollower:
    """Reads new events from a growing `events.jsonl` (for attaching to a live run).

    A line that is not an event is skipped and counted in `skipped`: one bad line never stops
    the rest of the run (or other runs) from being read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tail = LineTail(self.path)
        self.skipped = 0  # lines that were not an event (damaged, or from a newer writer)

    @property
    def offset(self) -> int:
        return self._tail.offset

    def poll(self) -> list[Event]:
        out = []
        for line in self._tail.poll():
            if not line.strip():
                continue
            try:
                event = from_dict(json.loads(line))
            except (ValueError, TypeError, RecursionError):
                event = None
            if event is None:
                self.skipped += 1
            else:
                out.append(event)
        return out
