"""Stages: plain Python, no Prefect. Each module has `NAME`, `VERSION`, `KIND`, a `Settings` model (what
determines its output) and `run(settings, *inputs, store) -> ArtifactRef`, and runs alone as
`python -m rebelflow.stages.<name> CONFIG [--round K]` or, as the launcher calls it, `--job FILE`
(the command line is `rebelflow.running.stage_cli`; a stage module imports it only in its `__main__` block).

Bump a stage's VERSION when its output for the same settings and inputs changes, so that old cached
artifacts are not reused.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from types import ModuleType

STAGE_MODULES = (
    "tiny_model", "prompts", "generate", "score", "prepare", "logprobs", "train", "evaluate", "sft",
    "generate_dialogues", "score_dialogues", "prepare_dialogues", "evaluate_dialogues",
    "preferences", "rm_train", "rm_eval", "online", "judge", "mt_bench_answer", "mt_bench_judge", "alpaca_answer",
)


def stage_module(name: str) -> ModuleType:
    if name not in STAGE_MODULES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_MODULES)}")
    return importlib.import_module(f"rebelflow.stages.{name}")


LAUNCHER_ENV = "REBELFLOW_LAUNCHER"  # pid:start-time of the process that launched this stage process


def die_with_launcher(token: str, interval: float = 0.5) -> None:
    """A stage process never outlives its launcher, nor holds the artifact lock or the GPUs after it: the
    kernel kills this process when its parent dies (Linux: PR_SET_PDEATHSIG; the launcher gives its own
    child the same), and a thread exits within `interval` seconds once the launcher named in `token` is gone
    (also a worker of `accelerate launch`, whose parent is the accelerate process, not the launcher)."""
    import psutil

    pid, _, started = token.partition(":")
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def alive() -> bool:
        try:
            return abs(psutil.Process(int(pid)).create_time() - float(started)) < 0.01
        except (psutil.NoSuchProcess, ValueError):
            return False

    def watch() -> None:
        while alive():
            time.sleep(interval)
        print(f"the launcher (pid {pid}) is gone; this stage process exits", file=sys.stderr, flush=True)
        os._exit(137)

    threading.Thread(target=watch, name="rebelflow-launcher-watch", daemon=True).start()


if os.environ.get(LAUNCHER_ENV):  # set by running.launch for the processes it starts, before heavy imports
    die_with_launcher(os.environ[LAUNCHER_ENV])
