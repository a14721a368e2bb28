"""The long-running processes a user keeps beside campaigns: `rebelflow server` (Prefect's server and UI on
the same PREFECT_HOME) and `rebelflow worker` (a process worker for a work pool); registered on the shared
app when rebelflow.cli is imported."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Annotated

import typer

from rebelflow.cli.common import app, console, err


@app.command()
def server(
    port: Annotated[int | None, typer.Option(help="port (default: a free one)")] = None,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    database_url: Annotated[str | None, typer.Option(
        help="a PostgreSQL database instead of SQLite in PREFECT_HOME, e.g. postgresql+asyncpg://user@host:5432/db "
             "(a password is better kept in $PREFECT_API_DATABASE_CONNECTION_URL than on the command line)")] = None,
) -> None:
    """Start Prefect's server and UI on the same PREFECT_HOME, so earlier runs are browsable. Ctrl-C stops it."""
    port = port or _free_port(host)
    env = {**os.environ, "PREFECT_SERVER_API_PORT": str(port), "PREFECT_SERVER_API_HOST": host}
    if database_url:
        if not database_url.startswith("postgresql+asyncpg://"):
            err.print("--database-url must start with postgresql+asyncpg:// (Prefect's PostgreSQL driver).")
            raise typer.Exit(2)
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://{host}:{port}"
    try:
        if _wait_healthy(f"{url}/api/health", proc):
            console.print(f"Prefect UI: {url}\nSend runs here: export PREFECT_API_URL={url}/api")
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=20)
    raise typer.Exit(proc.returncode or 0)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


@app.command()
def worker(pool: Annotated[str, typer.Option(help="the work pool `rebelflow deploy --pool` used")]) -> None:
    """Run flow runs of deployments on a process work pool (Prefect's process worker) until Ctrl-C."""
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    proc = subprocess.Popen(cmd)
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
    raise typer.Exit(proc.returncode or 0)
