"""The console of a CLI run: the temporary Prefect server started under a lock on PREFECT_HOME, and one
message per failure (no traceback, no repeats) while a flow runs."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

from rebelflow.config.errors import REPORTED


class _Reported(logging.Filter):
    """Keeps off the console what the CLI reports itself: the records (with tracebacks) that each task and
    flow a failure passes through logs about it. The Prefect API (the UI) still gets them."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, REPORTED):
            return False
        text = record.getMessage()
        return not (record.levelno >= logging.INFO and "Failed(" in text and any(
            name in text for name in ("ConfigError", "DataError", "StageFailed", "TransientError")))


def start_prefect() -> None:
    """Start this process's temporary Prefect server (no server configured) under a lock on PREFECT_HOME:
    two runs starting at once would migrate its SQLite database together, and the second crashed with
    'database is locked'. With PREFECT_API_URL set (a real server) there is nothing to start."""
    import fcntl
    from pathlib import Path

    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "rebelflow-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Prefect waits 20 s by default; the first start on a fresh machine (cold disk, the database
        # migrated) took longer on 2 cores. A longer setting of the user's wins.
        SubprocessASGIServer().start(timeout=max(120, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))


@contextlib.contextmanager
def one_message_per_failure():
    """While a flow runs from the CLI: no traceback or repeated message on the console for a failure the
    CLI reports (config, data, stage errors); every other record passes."""
    handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"]
    quiet = _Reported()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


class _Terminal(logging.Handler):
    """The progress lines (flows.progress) on the terminal: on a tty a `transient` line stays until the
    stage's final line replaces it; elsewhere transient lines are left out."""

    def __init__(self, stream):
        super().__init__(logging.INFO)
        self.stream, self.tty = stream, _isatty(stream)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if getattr(record, "transient", False):
            if self.tty:
                self.stream.write(f"\r\033[K{text}")
                self.stream.flush()
            return
        self.stream.write(f"\r\033[K{text}\n" if self.tty else f"{text}\n")
        self.stream.flush()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _terminal_copy(stream):
    """A writable copy of `stream` that survives its file descriptor being redirected, or the stream itself
    when it has none (a test runner's capture)."""
    import io

    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return stream
    stream.flush()
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


@contextlib.contextmanager
def run_console(log_path, consoles=(), quiet: bool = True):
    """A CLI run's console. Quiet: everything the process and its children write — Prefect's log lines,
    stage output and progress bars, wandb, library warnings — goes to `log_path` (the file descriptors
    themselves, so native libraries and subprocesses too); the terminal keeps the progress lines
    (flows.progress, also written to the log) and what the CLI prints through `consoles` (rich Consoles:
    tables, errors). Not quiet (-v): everything stays on the terminal, with the progress lines among it."""
    import sys

    from rebelflow.flows.progress import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    if not quiet:
        handler = _Terminal(sys.stderr)
        LOGGER.addHandler(handler)
        try:
            yield
        finally:
            LOGGER.removeHandler(handler)
            LOGGER.setLevel(level)
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # left open: Prefect's console handler, made during the run, keeps writing to it (the temporary server's
    # "stopping" line at exit), and wandb wraps its write
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    out, err = _terminal_copy(sys.stdout), _terminal_copy(sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    streams = sys.stdout, sys.stderr
    for fd in (1, 2):
        os.dup2(log.fileno(), fd)
    sys.stdout = sys.stderr = log
    handlers = [_Terminal(err), _Terminal(log)]
    for handler in handlers:
        LOGGER.addHandler(handler)
    shown = warnings.showwarning  # captured already (by someone else), it stays so
    logging.captureWarnings(True)
    for console in consoles:
        console.file = err if console.stderr else out
    try:
        yield
    finally:
        for console in consoles:
            console.file = None
        if warnings.showwarning is not shown:
            logging.captureWarnings(False)
        for handler in handlers:
            LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
        log.flush()
        sys.stdout, sys.stderr = streams
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        for stream in (out, err):
            if stream not in streams:
                stream.close()
