"""Several processes (GPUs, or CPU processes with gloo) on Accelerate, never a home-made engine.

`pefttool run RECIPE --processes N` re-runs the same command under PyTorch's launcher
(`torch.distributed.run`, the launcher `torchrun` and `accelerate launch` use), or under
`accelerate launch --config_file F` when the recipe's `[distributed]` section names an
Accelerate config (FSDP, DeepSpeed). Each process then sees RANK/WORLD_SIZE; Accelerate's
`Accelerator` sets up DDP (NCCL on GPUs, gloo on CPU).

In a multi-process run, the main process alone writes the run directory (events.jsonl, the
marker and lock, checkpoints' shared files, model/, metrics.json) and the terminal progress;
every process saves its own RNG state into the same checkpoint folder (Accelerate's
save_state). Decisions that must agree (the run directory, the checkpoint to resume, stopping
on a signal or a failing plugin) are made by the main process and broadcast.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from typing import Any

from .errors import PefttoolError


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    return rank() == 0


def broadcast(value: Any) -> Any:
    """The main process's `value`, on every process (a no-op in a single process)."""
    if world_size() == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def any_process(flag: bool) -> bool:
    """True on every process when it is true on any (a stop signal seen by one process)."""
    if world_size() == 1:
        return flag
    import torch
    from accelerate.state import PartialState

    state = PartialState()
    t = torch.tensor([1.0 if flag else 0.0], device=state.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def leave(code: int) -> None:
    """End a failing process of a multi-process run with its own exit code. Its process group is
    left alone: gloo's teardown at interpreter exit can abort (SIGABRT) while a peer closes the
    same connection, and the launcher would then report a signal instead of the 2 or 3 the
    process chose. Everything pefttool wrote is flushed first; a single process exits as usual."""
    if code == 0 or world_size() == 1:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier() -> None:
    if world_size() > 1:
        from accelerate.state import PartialState

        PartialState().wait_for_everyone()


def init(cpu: bool) -> None:
    """Set up the process group before anything is decided (the run directory)."""
    if world_size() > 1:
        from accelerate.state import PartialState

        PartialState(cpu=cpu)


def launch_command(argv: list[str], processes: int, section: Any) -> list[str]:
    """The launcher command that runs `pefttool ARGV` in `processes` processes per machine."""
    if section is not None and section.config_file:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               section.config_file, "--num_processes", str(processes * section.num_machines)]
        if section.num_machines > 1:
            cmd += ["--num_machines", str(section.num_machines), "--machine_rank",
                    str(section.machine_rank), "--main_process_ip", section.main_process_ip,
                    "--main_process_port", str(section.main_process_port)]
        return cmd + ["-m", "pefttool.cli", *argv]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    if section is not None and section.num_machines > 1:
        cmd += ["--nnodes", str(section.num_machines), "--node_rank", str(section.machine_rank),
                "--master_addr", section.main_process_ip, "--master_port",
                str(section.main_process_port)]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "pefttool.cli", *argv]


def run_launched(argv: list[str], processes: int, section: Any) -> int:
    """Run the launcher; pass the main process's output through, and reduce the launcher's
    own multi-line failure report to one line (each process prints its own error once)."""
    if processes < 1:
        raise PefttoolError(f"--processes: {processes} is not a process count; use 1 or more")
    cmd = launch_command(argv, processes, section)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    env["PEFTTOOL_LAUNCHED"] = "1"
    # The launcher gets a session of its own, so a Ctrl-C in the terminal reaches the training
    # processes once, forwarded by this process through the launcher (a second SIGINT would
    # abort them without a checkpoint).
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)
    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    shown_error = False
    assert proc.stderr is not None
    captured: list[str] = []
    for line in proc.stderr:
        text = line.rstrip("\n")
        captured.append(text)
        # pefttool's own lines (from the main process, or a failing process) pass through;
        # the launcher's banners and its ChildFailedError report do not.
        if text.startswith(("error: ", "warning: ", "internal error: ", "interrupted")):
            if text.startswith(("error", "internal")):
                if shown_error:
                    continue
                shown_error = True
            print(text, file=sys.stderr, flush=True)
        elif os.environ.get("PEFTTOOL_DEBUG"):
            print(text, file=sys.stderr, flush=True)
    code = proc.wait()
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    if forwarded and not shown_error:
        from .runfolder.rundir import ExitCode

        return ExitCode.for_signal(forwarded[0])  # every process stopped after the same step
    worker = _worker_exit_code(captured)
    if code != 0 and worker is not None:
        code = worker  # the failing process's own code (2 bad input, 3 training failed...)
    killed = _killed_worker(captured)
    if code != 0 and not shown_error and killed is not None:
        rank, name = killed
        why = " (the out-of-memory killer, or kill -9)" if name == "SIGKILL" else ""
        print(f"error: training process rank {rank} was killed by {name}{why}, and the others stopped "
              f"with it; the last checkpoint is kept: pefttool resume RUN_DIR continues the run",
              file=sys.stderr)
    elif code != 0 and not shown_error:
        print(f"error: a training process failed (launcher exit {code}); rerun with "
              f"PEFTTOOL_DEBUG=1 to see every process's output: {shlex.join(cmd)}",
              file=sys.stderr)
    return code


def _killed_worker(lines: list[str]) -> tuple[int, str] | None:
    """(rank, signal name) of a training process the launcher's report shows killed by a
    signal it did not send itself (it ends the others with SIGTERM), or None."""
    import re

    rank = None
    for line in lines:
        if m := re.match(r"\s*rank\s*:\s*(\d+)", line):
            rank = int(m.group(1))
        elif (m := re.match(r"\s*exitcode\s*:\s*-(\d+)", line)) and rank is not None:
            try:
                name = signal.Signals(int(m.group(1))).name
            except ValueError:
                continue
            if name != "SIGTERM":
                return rank, name
    return None


def _worker_exit_code(lines: list[str]) -> int | None:
    """The failed processes' exit code, from the launcher's report: a code a process chose
    (2 bad input, 3 training failed...) wins over a death by signal, which is usually another
    process's failure seen from the outside (a peer aborting when the group falls apart)."""
    import re

    codes = [int(m.group(1)) for line in lines if (m := re.search(r"exitcode\s*:\s*(-?\d+)", line))]
    chosen = [c for c in codes if c > 0]
    if chosen:
        return chosen[0]
    return 128 - codes[0] if codes else None  # -15 (killed by SIGTERM) → 143
