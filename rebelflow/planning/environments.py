"""Where a stage runs: the Python interpreter a launcher names, and the hardware key of the logprobs stage
as that interpreter sees it (its torch, device, dtype and attention kernel), so the key names the
machine and environment that compute π_old, not the planner's."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

from rebelflow.config.campaign import LauncherConfig
from rebelflow.config.errors import ConfigError


def interpreter(launcher: LauncherConfig) -> str:
    """The Python that runs a stage: launcher.python, the named environment .venv-<env> (looked for in the
    working directory, then beside the rebelflow checkout; $REBELFLOW_ENV_<ENV> overrides), or this one."""
    if launcher.python:
        return launcher.python
    if not launcher.env:
        return sys.executable
    override = os.environ.get(f"REBELFLOW_ENV_{launcher.env.upper()}")
    if override:
        candidates = [Path(override)]
    else:
        checkout = Path(__file__).resolve().parents[2]
        candidates = [base / f".venv-{launcher.env}" / "bin" / "python" for base in (Path.cwd(), checkout)]
    for path in candidates:
        if path.is_file():
            return str(path)
    raise ConfigError(
        f"[launcher.env] the environment {launcher.env!r} was not found (looked for "
        f"{', '.join(str(c) for c in candidates)}). Build it (`make {launcher.env}-env` in the rebelflow "
        f"checkout) or point REBELFLOW_ENV_{launcher.env.upper()} at its python."
    )


def hardware_key(launcher: LauncherConfig, dtype: str, attn: str) -> str:
    """ml.models.hardware_fingerprint as computed by the interpreter that will run the stage (asked once
    per interpreter and process when it is another one than this)."""
    python = interpreter(launcher)
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        from rebelflow.ml.models import hardware_fingerprint

        return hardware_fingerprint(dtype, attn)
    return _probe(python, dtype, attn)


@cache
def _probe(python: str, dtype: str, attn: str) -> str:
    code = f"from rebelflow.ml.models import hardware_fingerprint; print(hardware_fingerprint({dtype!r}, {attn!r}))"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except OSError as exc:
        raise ConfigError(f"[logprobs.launcher] cannot run {python!r}: {exc}") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(
            f"[logprobs.launcher] {python} could not report its hardware ({last}). The logprobs stage runs there: "
            "install rebelflow and torch in that environment, or run logprobs with this interpreter."
        )
    return lines[-1]
