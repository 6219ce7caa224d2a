"""Several processes on CPU (gloo), through the same launcher as on GPUs: the results match a
single process with the same global batch, one process writes the run, and a killed
multi-process run resumes to the same result. Few and small: each run starts 2 processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_helpers import child_env, events_of, of_type, tensors
from pefttool.runfolder.checkpoints import list_checkpoints
from tiny_models import write_tiny_recipe

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory, tiny_classifier_dir):
    """The tiny classifier without dropout: runs with other batch splits can then agree."""
    folder = tmp_path_factory.mktemp("no-dropout") / "model"
    shutil.copytree(tiny_classifier_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def pefttool(*args, cwd: Path, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pefttool.cli", *map(str, args)], cwd=cwd,
                          env=child_env(), capture_output=True, text=True, timeout=timeout, **kwargs)


def recipe_for(folder: Path, model: Path, batch: int, strategy: str = "lora") -> Path:
    return write_tiny_recipe(folder, model, strategy, overrides={
        "train.batch_size": batch, "train.epochs": 2, "train.log_every": 1,
        "train.checkpoint_every": 4, "train.lr": 0.02})


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, no_dropout_model):
    """The finished 2-process run (batch 4 per process) of each strategy asked for, run once:
    strategy → (run folder, the launcher's CompletedProcess). Read-only."""
    done: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def get(strategy: str) -> tuple[Path, subprocess.CompletedProcess]:
        if strategy not in done:
            folder = tmp_path_factory.mktemp(f"two-{strategy}")
            recipe = recipe_for(folder, no_dropout_model, batch=4, strategy=strategy)
            result = pefttool("run", recipe, "--processes", 2, cwd=folder)
            assert result.returncode == 0, result.stderr
            done[strategy] = folder / "runs" / "recipe", result
        return done[strategy]

    return get


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, no_dropout_model, two_process_run):
    from pefttool.engine import run_recipe  # the one-process run in this process
    from pefttool.recipe import load_recipe

    one = recipe_for(tmp_path / "one", no_dropout_model, batch=8)
    assert run_recipe(load_recipe(one)).status == "completed"
    run2, r2 = two_process_run("lora")
    run1 = tmp_path / "one" / "runs" / "recipe"

    events2 = events_of(run2)
    (start,) = of_type(events2, "start")  # one writer: one start event, one end event
    assert start.processes == 2 and len(of_type(events2, "end")) == 1
    assert "× 2 processes" in r2.stdout
    listed = pefttool("runs", run2.parent, cwd=tmp_path)
    assert "2 processes" in listed.stdout  # a multi-process run is listed like any other
    losses1 = [e.loss for e in of_type(events_of(run1), "step")]
    losses2 = [e.loss for e in of_type(events2, "step")]
    assert len(losses1) == len(losses2) == 12
    assert max(abs(a - b) for a, b in zip(losses1, losses2)) < 1e-4, (losses1, losses2)
    w1 = tensors(run1 / "model" / "adapter_model.safetensors")
    w2 = tensors(run2 / "model" / "adapter_model.safetensors")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    last = list_checkpoints(run2)[-1]
    assert sorted(p.name for p in last.glob("random_states_*")) == ["random_states_0.pkl",
                                                                   "random_states_1.pkl"]
    evals1 = [e.metrics["accuracy"] for e in of_type(events_of(run1), "eval")]
    evals2 = [e.metrics["accuracy"] for e in of_type(events2, "eval")]
    assert evals1 == evals2  # every eval row counted once, over both processes
    # every process's tokens counted once (the run's tokens_seen, and so metrics.json's
    # tokens_per_s, once added up the main process's share only: half of them)
    from pefttool.runfolder.checkpoints import TrainState

    seen = [TrainState.from_file(list_checkpoints(run)[-1] / "trainer_state.json").tokens_seen
            for run in (run1, run2)]
    assert seen[0] == seen[1] > 0, seen


@pytest.mark.parametrize("strategy", ["lora", "qlora"])
def test_a_killed_multi_process_run_resumes_to_the_same_result(strategy, tmp_path, no_dropout_model,
                                                              two_process_run):
    if strategy == "qlora":
        pytest.importorskip("bitsandbytes")
    reference, _ = two_process_run(strategy)  # the same recipe, not interrupted
    ref_weights = tensors(reference / "model" / "adapter_model.safetensors")

    killed = recipe_for(tmp_path / "killed", no_dropout_model, batch=4, strategy=strategy)
    run_dir = tmp_path / "killed" / "runs" / "recipe"
    proc = subprocess.Popen([sys.executable, "-m", "pefttool.cli", "run", str(killed),
                             "--processes", "2"], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list_checkpoints(run_dir):
        time.sleep(0.05)
    import psutil

    # The launcher and every training process at once (the launcher starts its workers in
    # sessions of their own, so a process-group kill would miss them).
    family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    for member in family:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    gone, alive = psutil.wait_procs(family[1:], timeout=20)
    assert not alive, alive
    assert list_checkpoints(run_dir), "no checkpoint before the kill"
    assert not (run_dir / "metrics.json").exists(), "the run finished before the kill"

    resumed = pefttool("resume", run_dir, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step-" in resumed.stdout
    weights = tensors(run_dir / "model" / "adapter_model.safetensors")
    assert max(float((weights[k] - ref_weights[k]).abs().max()) for k in weights) < 1e-6


def test_resuming_with_another_process_count_is_refused(tmp_path, no_dropout_model):
    recipe = recipe_for(tmp_path, no_dropout_model, batch=4)
    from pefttool.engine import run_recipe  # a one-process run, stopped after its first checkpoint
    from pefttool.recipe import load_recipe
    from test_run_integrity import StopAfter

    result = run_recipe(load_recipe(recipe), observers=(StopAfter(4),))
    assert result.status == "interrupted"
    refused = pefttool("run", recipe, "--resume", "--processes", 2, cwd=tmp_path)
    assert refused.returncode == 2
    assert "distributed.processes: 1 → 2" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_an_accelerate_config_and_multi_node_settings_build_the_launch(tmp_path):
    """FSDP/DeepSpeed and several machines go through accelerate launch / torchrun flags
    (not run here: no GPUs); the command is what the README says."""
    from pefttool.distributed import launch_command
    from pefttool.recipe import DistributedSection

    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\n")
    fsdp = launch_command(["run", "r.toml"], 4, DistributedSection(config_file=str(config)))
    assert fsdp[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert fsdp[-4:] == ["-m", "pefttool.cli", "run", "r.toml"] and "4" in fsdp
    nodes = launch_command(["run", "r.toml"], 8, DistributedSection(
        num_machines=2, machine_rank=1, main_process_ip="10.0.0.1"))
    assert nodes[1:3] == ["-m", "torch.distributed.run"]
    for flag, value in (("--nproc_per_node", "8"), ("--nnodes", "2"), ("--node_rank", "1"),
                        ("--master_addr", "10.0.0.1")):
        assert nodes[nodes.index(flag) + 1] == value


CRASHING_PLUGIN = '''
import os
import pefttool
from pefttool_lora import LoraStrategy


class CrashOnRank1(LoraStrategy):
    name = "crash-rank1"

    def prepare_batch(self, batch, recipe, options):
        if os.environ.get("RANK") == "1" and not hasattr(self, "seen"):
            self.seen = 0
        if os.environ.get("RANK") == "1":
            self.seen += 1
            if self.seen == 3:
                raise RuntimeError("GPU 1 fell off the bus")
        return batch


@pefttool.hookimpl
def pefttool_register_strategies(register):
    register(CrashOnRank1())
'''


def test_a_crash_in_one_process_ends_the_run_with_one_line_not_a_hang(tmp_path, no_dropout_model):
    from plugin_pkg.sitedir import add_distribution

    site = add_distribution(tmp_path / "site", "pefttool-crash", "0.1", {"crash": "crash_plugin"},
                            {"crash_plugin": CRASHING_PLUGIN})
    recipe = write_tiny_recipe(tmp_path, no_dropout_model, "lora", overrides={"train.batch_size": 4})
    text = recipe.read_text().replace('strategy = "lora"', 'strategy = "crash-rank1"')
    recipe.write_text(text)
    env = child_env(PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-m", "pefttool.cli", "run", str(recipe), "--processes", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 3, done.stderr
    assert len(lines) == 1 and "GPU 1 fell off the bus" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_signal_to_the_launcher_stops_every_process_after_the_same_step(tmp_path, no_dropout_model):
    recipe = write_tiny_recipe(tmp_path, no_dropout_model, "lora", overrides={
        "train.batch_size": 4, "train.epochs": 20, "train.log_every": 1})
    run_dir = tmp_path / "runs" / "recipe"
    proc = subprocess.Popen([sys.executable, "-m", "pefttool.cli", "run", str(recipe), "--processes", "2"],
                            cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (
            (run_dir / "events.jsonl").exists() and of_type(events_of(run_dir), "step")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what kill -INT, or Ctrl-C on the launcher, does
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert err.strip() == "" and "stopped by SIGINT after step" in out
    (end,) = of_type(events_of(run_dir), "end")
    stops = [e for e in of_type(events_of(run_dir), "checkpoint") if e.reason == "stop"]
    assert end.status == "interrupted" and len(stops) == 1 and stops[0].step == end.step < 120
    last = list_checkpoints(run_dir)[-1]
    assert len(list(last.glob("random_states_*.pkl"))) == 2  # both processes saved their state


def test_a_chosen_exit_code_wins_over_a_peer_killed_by_signal():
    from pefttool.distributed import _worker_exit_code

    report = ["[0]:", "  exitcode  : -6 (pid: 11)", "[1]:", "  exitcode  : 2 (pid: 12)"]
    assert _worker_exit_code(report) == 2           # rank 1 refused; rank 0 aborted because of it
    assert _worker_exit_code(["  exitcode  : -15 (pid: 3)"]) == 143
    assert _worker_exit_code(["nothing"]) is None


def test_a_worker_killed_by_a_signal_is_named_with_its_rank():
    """Issue 30, item 12: kill -9 of one worker ended with a bare 'a training process failed'
    (earlier, gloo's 'Connection closed by peer' as an internal error). The launcher's report
    (torch 2.13's, as printed when rank 1 was killed by kill -9 during a run) names the rank and
    the signal; the SIGTERM the launcher sent the other one is not the cause."""
    from pefttool.distributed import _killed_worker

    report = ["torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
              "  rank      : 0 (local_rank: 0)", "  exitcode  : -15 (pid: 11870)  (SIGTERM)",
              "  error_file: <N/A>", "  traceback : Signal 15 (SIGTERM) received by PID 11870",
              "  rank      : 1 (local_rank: 1)", "  exitcode  : -9 (pid: 11871)  (SIGKILL)",
              "  error_file: <N/A>", "  traceback : Signal 9 (SIGKILL) received by PID 11871"]
    assert _killed_worker(report) == (1, "SIGKILL")
    assert _killed_worker(report[:5]) is None   # only the launcher's own SIGTERM
    assert _killed_worker(["  rank      : 0 (local_rank: 0)", "  exitcode  : 3 (pid: 1)"]) is None
