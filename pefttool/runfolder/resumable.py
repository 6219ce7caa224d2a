"""Whether a run folder can be resumed, and how: one answer for `pefttool resume`, the engine
and the TUI's `r` (each used to decide it its own way).

    resumability(run_dir) -> Resumability(action, reason, damage)
        "continue": an interrupted, crashed or failed run with a checkpoint: train on
        "rebuild":  a finished run whose model/ is damaged or gone: save model/ again from the
                    best evaluation's checkpoint, without training
        "none":     nothing to resume; `reason` says why in words (the one-line error)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import list_checkpoints
from .model_dir import model_damage
from .rundir import EVENTS_FILE, RunDir, RunStatus
from .summary import summarize


@dataclass(frozen=True)
class Resumability:
    action: str               # "continue" | "rebuild" | "none"
    reason: str = ""          # for "none": why, as the one-line error says it
    damage: str | None = None  # for "rebuild": what is wrong with model/
    status: str = ""


def resumability(run_dir: Path, own_pid: int | None = None) -> Resumability:
    """How the run in `run_dir` can be taken up. `own_pid`: a process that may itself be the
    run's writer (a resume in the same process), else this process."""
    run = RunDir(Path(run_dir))
    if not run.events.exists():
        return Resumability("none", f"{run.path} holds no run to resume (no {EVENTS_FILE}); start it "
                                    f"with pefttool run")
    state = summarize(run.path)
    status = str(state.status)
    if state.status in (RunStatus.COMPLETED, RunStatus.EARLY_STOPPED):
        damage = model_damage(run.model)
        if damage is None:
            return Resumability("none", f"the run in {run.path} already finished ({status}); its "
                                        f"model is in {run.model}", status=status)
        return Resumability("rebuild", damage=damage, status=status)
    if state.status == RunStatus.RUNNING and state.pid != (own_pid or os.getpid()):
        return Resumability("none", f"the run in {run.path} is still running (pid alive); stop it first",
                            status=status)
    if not list_checkpoints(run.path):
        return Resumability("none", f"the run in {run.path} has no checkpoint left to resume from "
                                    f"(checkpoints/ is empty or gone)", status=status)
    return Resumability("continue", status=status)
