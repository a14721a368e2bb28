"""Kill -9 of the process that launched a stage: no stage process outlives it, the stage's log keeps
what it wrote, and the next attempt resumes from the checkpoint and appends to the same log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from rebelflow.planning.campaign import Baseline, round_plan
from rebelflow.running.launch import launch
from tests.conftest import make_config
from tests.stages.helpers import run_round

LAUNCHER = """
import sys
from rebelflow.planning.jobs import StageJob
from rebelflow.running.launch import launch
from rebelflow.store.local import Store
job = StageJob.model_validate_json(open(sys.argv[1]).read())
launch(job, Store(sys.argv[2]))
"""


def stage_processes(job_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(job_id in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def watching(job_id: str) -> bool:
    """The worker has imported rebelflow.stages, which starts its watch on the launcher (a second thread)
    before the stage's heavy imports; before that (interpreter start-up) nothing of rebelflow runs yet."""
    workers = [p for p in stage_processes(job_id) if "accelerate" not in " ".join(p.cmdline())]
    try:
        return bool(workers) and all(p.num_threads() >= 2 for p in workers)
    except psutil.NoSuchProcess:
        return False


def train_launched(tmp_path, prompts_file, tiny_policy, **train):
    """Round 1 up to logprobs in process, then its train job launched by another process (as a flow would);
    returns (store, job, the launcher process)."""
    cfg = make_config(tmp_path, prompts_file, train={"launcher": {"kind": "accelerate"}, **train})
    store, _, policy = run_round(cfg, tiny_policy, upto="logprobs")
    job = round_plan(cfg.model_copy(update={"stop_after": "train"}), 1, policy, Baseline()).train
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(job_file), str(store.root)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return store, job, launcher


def kill_and_wait(launcher, job_id: str, seconds: float) -> list[psutil.Process]:
    """Kill -9 the launcher; the stage processes still alive `seconds` later."""
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    killed_at = time.time()
    while stage_processes(job_id) and time.time() - killed_at < seconds:
        time.sleep(0.05)
    return stage_processes(job_id)


@pytest.mark.parametrize("processes", [1, 2])
def test_killing_the_launcher_at_start_up_ends_the_stage_processes(tmp_path, prompts_file, tiny_policy, processes):
    """Killed before the stage writes a line (no broken pipe to end it): its processes still end at once.
    One process runs the stage module itself; two run under `accelerate launch`, whose workers sit in
    sessions of their own (torch's elastic agent starts them so), out of reach of the kernel's parent-death
    signal: they end by watching the launcher."""
    launcher_cfg = {"kind": "accelerate", "num_processes": processes}
    store, job, launcher = train_launched(tmp_path, prompts_file, tiny_policy, launcher=launcher_cfg)
    def workers() -> list[psutil.Process]:
        return [p for p in stage_processes(job.ref.id) if "accelerate" not in " ".join(p.cmdline())]

    deadline = time.time() + 120
    while not (watching(job.ref.id) and len(workers()) == processes) and time.time() < deadline:
        time.sleep(0.05)  # the stage processes, still starting up
    assert watching(job.ref.id) and len(workers()) == processes
    assert len(stage_processes(job.ref.id)) == processes + (processes > 1)  # and accelerate's launcher
    assert not kill_and_wait(launcher, job.ref.id, 2), "stage processes outlived their launcher"
    assert not store.is_complete(job.ref)


def test_killing_the_launcher_ends_the_stage_process_and_keeps_its_log(tmp_path, prompts_file, tiny_policy):
    store, job, launcher = train_launched(tmp_path, prompts_file, tiny_policy, epochs=60, checkpoint_every=4)
    log_path = store.root / "logs" / f"{job.ref.id}.log"
    deadline = time.time() + 240
    while time.time() < deadline and "checkpoint saved at update 8" not in (log_path.read_text() if log_path.exists() else ""):
        assert launcher.poll() is None, "the launcher ended before the checkpoint"
        time.sleep(0.2)
    assert stage_processes(job.ref.id), "the stage process should be running"
    survivors = kill_and_wait(launcher, job.ref.id, 5)
    assert not survivors, f"stage processes outlived their launcher: {[p.pid for p in survivors]}"
    first = log_path.read_text()
    assert "===== attempt started" in first and "checkpoint saved at update 8" in first  # written as it ran
    assert not store.is_complete(job.ref)
    assert launch(job, store, emit=lambda line: None) == job.ref
    log = log_path.read_text()
    assert log.startswith(first) and log.count("===== attempt started") == 2  # appended, not overwritten
    assert "resuming from checkpoint" in log and "===== exit code 0" in log
