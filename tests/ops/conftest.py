"""A real Prefect server for the operations tests, started the way a user starts it (`rebelflow server`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no healthy server at {url} after {timeout}s")


def serve_prefect(home: Path, *extra: str):
    """`rebelflow server` on a free port with its own PREFECT_HOME, as a context: yields the API URL and
    sets it for this process (clients) meanwhile."""
    import contextlib

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from rebelflow.running.launch import kill_tree

    @contextlib.contextmanager
    def running():
        port = free_port()
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        proc = subprocess.Popen([sys.executable, "-m", "rebelflow.cli", "server", "--port", str(port), *extra],
                                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        url = f"http://127.0.0.1:{port}/api"
        try:
            wait_healthy(url, proc)
            with temporary_settings({PREFECT_API_URL: url}):
                yield url
        finally:
            kill_tree(proc.pid)

    return running()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    with serve_prefect(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    return found[-1].parent


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL server (Debian's package) on a free port with a `prefect` database; yields its
    SQLAlchemy URL. As root, the server runs as the `postgres` user (initdb refuses root)."""
    import tempfile

    # Not under pytest's tmp folders: those are private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="rebelflow-pg-"))
    bindir, data, port = _postgres_bin(), root / "data", free_port()
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]

    def run(*cmd: str) -> None:
        subprocess.run([*as_owner, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data.parent / "log"), "-w", "-o",
        f"-p {port} -h 127.0.0.1 -k {data.parent}", "start")
    run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect")
    yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect", (bindir, port, as_owner)
    run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    shutil.rmtree(root, ignore_errors=True)
