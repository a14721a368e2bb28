"""Run a stage job in this process or in a subprocess (optionally under another Python interpreter).

A subprocess gets the job as a JSON file and runs `python -m rebelflow.stages.<stage> --job FILE`, or
`python -m accelerate.commands.launch ... --module rebelflow.stages.<stage> --job FILE` for kind=accelerate
with several processes or a launch config (e.g. DeepSpeed ZeRO, from launcher.config_file).
Its stdout and stderr are merged into one pipe, written whole to `<store>/logs/<id>.log` and passed line
by line (at most a few per second) to `emit`, e.g. the Prefect run logger. A user error inside the
subprocess comes back as the same error class; cancelling kills the whole process group.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rebelflow.config.errors import (
    REPORTED,
    ConfigError,
    DataError,
    RebelflowError,
    StageFailed,
    TransientError,
    is_transient,
)
from rebelflow.planning.environments import interpreter
from rebelflow.planning.jobs import StageJob
from rebelflow.running.stage_cli import ERROR_PREFIX, run_job
from rebelflow.stages import LAUNCHER_ENV
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef
from rebelflow.store.resources import reset_peak_rss


def launch(job: StageJob, store: Store, emit: Callable[[str], None] = print) -> ArtifactRef:
    """Run the job in this process or a subprocess. A failure comes back classified the same way for every
    launcher (config.errors): ConfigError/DataError, TransientError (retried), StageFailed (a bug or out of
    memory, not retried); each names the step and round, the last two the log with the full traceback."""
    where = f"{job.name} round {job.round}"
    try:
        if job.launcher.kind != "inprocess":
            return _subprocess(job, store, emit)
        try:
            reset_peak_rss()  # the flow's process: the stage's manifest records its own peak
            return run_job(job, store)
        except REPORTED:
            raise
        except Exception as exc:  # a stage's own exception, in this process: its traceback to the stage's log
            log_path = _log_exception(store, job)
            kind = TransientError if is_transient(exc) else StageFailed
            raise kind(f"{type(exc).__name__}: {exc}. Full traceback: {log_path}") from exc
    except RebelflowError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    except (TransientError, StageFailed) as exc:
        raise type(exc)(f"{where} failed: {exc}") from exc.__cause__


def _log_exception(store: Store, job: StageJob) -> Path:
    path = store.root / "logs" / f"{job.ref.id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log:
        log.write(f"\n===== in-process attempt failed {time.strftime('%Y-%m-%d %H:%M:%S')}\n{traceback.format_exc()}")
    return path


def _subprocess(job: StageJob, store: Store, emit: Callable[[str], None]) -> ArtifactRef:
    jobs_dir, logs_dir = store.root / ".jobs", store.root / "logs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    job_file = jobs_dir / f"{job.ref.id}.json"
    job_file.write_text(job.model_dump_json(indent=2))
    python = interpreter(job.launcher)
    cmd = [*_entry(job, python), "--job", str(job_file), "--store", str(store.root)]
    log_path = logs_dir / f"{job.ref.id}.log"
    emit(f"launching {' '.join(cmd)} (full log: {log_path})")
    tail: deque[str] = deque(maxlen=40)
    with open(log_path, "a", buffering=1) as log:  # appended per attempt, written line by line as it runs
        log.write(f"\n===== attempt started {time.strftime('%Y-%m-%d %H:%M:%S')} (launcher pid {os.getpid()}): "
                  f"{' '.join(cmd)}\n")
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
                env={**os.environ, **_entry_env(job), LAUNCHER_ENV: watch_token()}, preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise ConfigError(f"[{job.stage}.launcher.python] cannot start {python!r}: {exc}") from exc
        try:
            reports = _pump(proc, log, tail, emit)
        except BaseException:
            kill_tree(proc.pid)
            raise
        log.write(f"===== exit code {proc.returncode}\n")
    if proc.returncode == 0:
        return job.ref
    if store.is_complete(job.ref):  # a crash in teardown (gloo, an engine's shutdown): the work is done
        emit(f"warning: {job.name} round {job.round} published its artifact, which verifies, then its process "
             f"exited with code {proc.returncode} while shutting down; the artifact is kept. Log: {log_path}")
        return job.ref
    raise _failure(proc.returncode, tail, log_path, reports)


def _failure(returncode: int, tail: deque, log_path: Path, reports: Reports) -> Exception:
    """The error a failed stage process reported on its last `rebelflow-error:` line, as the same class
    (running.stage_cli classifies it); a process that died without one (a signal, a crash) failed. A bug's
    message gains the first error a helper process logged, when there is one: the root cause."""
    cause = f"; root cause: {reports.first_logged}" if reports.first_logged else ""
    reported = reports.error()
    if reported:
        kind, _, message = reported.removeprefix(ERROR_PREFIX).strip().partition(": ")
        message = unescape(message)
        classes = {"ConfigError": ConfigError, "DataError": DataError, "TransientError": TransientError}
        if kind in classes:
            return classes[kind](message if kind in ("ConfigError", "DataError") else f"{message}. Full log: {log_path}")
        return StageFailed(f"{message}{cause}. Full traceback: {log_path}")
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (SIGKILL: often the machine's out-of-memory killer; lower the batch sizes)" if name == "SIGKILL" else ""
        return StageFailed(f"the stage process was killed by {name}{hint}{cause}. Full log: {log_path}")
    last = [line for line in tail if line.strip()][-3:]
    return StageFailed(f"the stage process exited with code {returncode}; last lines: {' | '.join(last)}{cause}. "
                       f"Full log: {log_path}")


def _entry(job: StageJob, python: str) -> list[str]:
    """The command that runs the stage module: plain Python, or `accelerate launch` around it. One process
    without a launch config runs as plain Python too: `accelerate launch` would only start it as a child,
    after importing torch itself (2 s per stage on a CPU), and would pin it to one thread (below)."""
    module = f"rebelflow.stages.{job.stage}"
    processes = job.launcher.num_processes
    if not _under_accelerate(job):
        return [python, "-u", "-m", module]
    cmd = [python, "-m", "accelerate.commands.launch"]
    if processes is not None:
        cmd += ["--num_processes", str(processes)]
    # `accelerate launch` sets OMP_NUM_THREADS to 1 unless told (or run with --cpu): on a CPU that would
    # leave all cores but one idle. Each process gets its share of the cores; a user's OMP_NUM_THREADS wins.
    cmd += ["--num_cpu_threads_per_process", str(threads_per_process(job.launcher.processes()))]
    if job.launcher.config_file:
        cmd += ["--config_file", job.launcher.config_file]
        # the stage's dtype decides, not the config's mixed_precision: DeepSpeed would cast an fp32 policy to
        # bf16 at prepare while its logprobs and reference stay fp32. A CPU run computes in fp32.
        precision = {"bfloat16": "bf16", "float16": "fp16"}.get(job.settings.get("dtype"), "no") if _cuda() else "no"
        cmd += ["--mixed_precision", precision]
    else:  # explicit defaults, so accelerate does not read (or warn about) a user-level default config
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu"]
    return [*cmd, "--module", module]


def _under_accelerate(job: StageJob) -> bool:
    """Whether the job runs under `accelerate launch`: several processes, or a launch config."""
    launcher = job.launcher
    return launcher.kind == "accelerate" and ((launcher.num_processes or 1) > 1 or bool(launcher.config_file))


def _entry_env(job: StageJob) -> dict[str, str]:
    """What `accelerate launch` would have set for the one process that runs without it (the same explicit
    defaults: a user's ACCELERATE_MIXED_PRECISION must not autocast training while logprobs stay fp32)."""
    if job.launcher.kind != "accelerate" or _under_accelerate(job):
        return {}
    return {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO", "ACCELERATE_USE_CPU": "False"}


def threads_per_process(processes: int) -> int:
    """CPU threads for each of a launch's processes: $OMP_NUM_THREADS when set, else the physical cores
    this process may run on (its CPU affinity: a Slurm or container allocation) shared out."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    import psutil

    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    logical, physical = psutil.cpu_count() or allowed, psutil.cpu_count(logical=False) or allowed
    cores = max(1, allowed * physical // max(logical, 1))  # hyperthreads left out, as torch's default does
    return max(1, cores // max(1, processes))


def kill_tree(pid: int) -> None:
    """Kill a stage process and everything it started. The workers of a multi-process launch sit in sessions
    of their own (torch's elastic agent starts them so), out of reach of a process-group kill."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class Reports:
    """What a stage process said about its failure: its own `rebelflow-error:` reports (wherever they sit:
    after them a multi-process launcher may print dozens of lines of its own) and the first error a helper
    process of its logged (vLLM's engine core and workers log the root cause there, while the stage itself
    only sees "the engine died")."""

    errors: list[str] = field(default_factory=list)
    first_logged: str | None = None

    def error(self) -> str | None:
        """The report that explains the failure: of several ranks', a user error before a transient one
        before a bug (a peer's follow-on failure must not hide the first rank's bad data), else the first."""
        for kinds in (("ConfigError", "DataError"), ("TransientError",)):
            for report in self.errors:
                if report.removeprefix(ERROR_PREFIX).strip().startswith(kinds):
                    return report
        return self.errors[0] if self.errors else None


# a native library's abort: "terminate called after throwing an instance of 'gloo::EnforceNotMet'", then
# "  what():  [enforce fail at .../pair.cc:446] op.preamble.length <= op.nbytes. 8 vs 4"
NATIVE_ABORT = re.compile(r"terminate called after throwing an instance of '(?P<type>[^']+)'")
# "(Worker pid=12) ERROR 12-02 01:07:29 [multiproc_executor.py:1063] RuntimeError: CPU Generator does not use offset"
LOGGED_ERROR = re.compile(r"^\((?P<who>[^)]*)\) ERROR [^\]]*\] (?P<error>[\w.]+(?:Error|Exception): .+)$")
MAX_CAUSE = 300


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CAUSE else text[:MAX_CAUSE] + "…"


def unescape(text: str) -> str:
    """Undo running.stage_cli.one_line."""
    return re.sub(r"\\(\\|n)", lambda m: "\\" if m[1] == "\\" else "\n", text)


def _pump(proc: subprocess.Popen, log, tail: deque, emit: Callable[[str], None]) -> Reports:
    """Every line to the log; a throttled subset to `emit` (the run logger), tracebacks and the error report
    left to the log (the failure comes back as one classified error)."""
    last, in_traceback, reports, native = 0.0, False, Reports(), None
    for line in proc.stdout:
        log.write(line)
        line = line.rstrip()
        tail.append(line)
        if ERROR_PREFIX in line:  # a progress bar may share its line
            reports.errors.append(line[line.index(ERROR_PREFIX):])
            continue
        logged, aborted = LOGGED_ERROR.match(line), NATIVE_ABORT.search(line)
        if logged and reports.first_logged is None:
            reports.first_logged = f"{_cut(logged['error'])} (logged by {logged['who'].split(' pid')[0]})"
        native = aborted["type"] if aborted else native
        if native and line.lstrip().startswith("what():") and reports.first_logged is None:
            reports.first_logged = f"{native}: {_cut(line.split('what():', 1)[1].strip())} (a native abort)"
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
            emit(f"(a traceback: see {log.name})")
        elif in_traceback and not line.startswith((" ", "\t")):
            in_traceback = False
            continue  # the traceback's last line, the exception itself
        if in_traceback:
            continue
        now = time.monotonic()
        if now - last > 0.25:
            emit(line)
            last = now
    proc.wait()
    return reports


# A stage process never outlives the process that launched it. Its direct child gets SIGKILL from the kernel
# when the launcher dies (Linux: PR_SET_PDEATHSIG); every stage process, also the workers that `accelerate
# launch` starts in sessions of their own, watches the launcher named in $REBELFLOW_LAUNCHER
# (stages.die_with_launcher, started when rebelflow.stages is imported, before the stage's heavy imports).


def watch_token() -> str:
    """This process as the stage processes watch it: its pid and start time (a reused pid does not match)."""
    import psutil

    return f"{os.getpid()}:{psutil.Process().create_time()}"


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork: the child only calls it


_PRCTL = _prctl()


def _die_with_parent() -> None:
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills the child when the launcher dies
