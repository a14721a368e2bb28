"""The console of a CLI run: the temporary Prefect server started under a lock on PREFECT_HOME, and one
message per failure (no traceback, no repeats) while a flow runs."""

from __future__ import annotations

import contextlib
import logging

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

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "rebelflow-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        SubprocessASGIServer().start()


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
