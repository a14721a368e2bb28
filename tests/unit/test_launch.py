"""The command a stage job runs under: plain Python for one process, `accelerate launch` with each
process's share of the CPU cores for several or a launch config."""

from __future__ import annotations

import subprocess
import sys

import psutil

from rebelflow.config.campaign import LauncherConfig
from rebelflow.planning.jobs import StageJob
from rebelflow.running.launch import _entry, threads_per_process
from rebelflow.store.refs import ArtifactRef


def job(**launcher) -> StageJob:
    ref = ArtifactRef(stage="train", id="train-0123456789abcdef", kind="model")
    return StageJob(stage="train", name="train", round=1, settings={"dtype": "float32"}, inputs=[], ref=ref,
                    launcher=LauncherConfig(**launcher))


def test_one_process_runs_the_stage_module_itself_without_accelerates_launcher():
    python = "/some/python"
    for launcher in ({"kind": "accelerate"}, {"kind": "accelerate", "num_processes": 1}, {"kind": "subprocess"}):
        assert _entry(job(**launcher), python) == [python, "-u", "-m", "rebelflow.stages.train"]


def test_several_processes_each_get_their_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cmd = _entry(job(kind="accelerate", num_processes=2), sys.executable)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and cmd[-2:] == ["--module", "rebelflow.stages.train"]
    assert cmd[cmd.index("--num_cpu_threads_per_process") + 1] == str(threads_per_process(2))
    # a node of 16 hyperthreads on 8 cores, of which this job may use 8 CPUs (4 cores): 2 threads a process
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 16 if logical else 8)
    assert [threads_per_process(n) for n in (1, 2, 4, 8)] == [4, 2, 1, 1]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    assert threads_per_process(2) == 3


def test_the_threads_reach_each_process_of_a_launch(monkeypatch, tmp_path):
    """The command _entry makes for two processes, running a script in place of the stage module: each
    process gets the threads asked for (accelerate alone would give them OMP_NUM_THREADS=1)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    script = tmp_path / "threads.py"
    script.write_text("import os; print('threads', os.environ.get('OMP_NUM_THREADS'), flush=True)\n")
    cmd = _entry(job(kind="accelerate", num_processes=2), sys.executable)
    assert cmd[-2:] == ["--module", "rebelflow.stages.train"]
    out = subprocess.run([*cmd[:-2], str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("threads 2") == 2, out.stdout
