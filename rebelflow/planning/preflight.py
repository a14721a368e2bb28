"""Checks before any model loads, shared by `rebelflow run` (preflight), deployments and `rebelflow
doctor`: every round's prompt slice exists and is usable, every stage's interpreter and engine are there,
and what this machine lacks for a config (GPUs for tensor parallelism). Each failure is a ConfigError or
DataError naming the setting and the fix.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from rebelflow.config.campaign import LauncherConfig, RunConfig
from rebelflow.config.errors import ConfigError
from rebelflow.planning.campaign import turns_column
from rebelflow.stages import prompts


def preflight(cfg: RunConfig) -> None:
    """Checks that need the data but no model: every round's prompt slice exists and is usable, and so
    do the evaluation prompts; every stage's interpreter and engine are there. Raises DataError or
    ConfigError before any stage starts (reads each source once)."""
    check_engines(cfg)
    first = prompts.Settings.from_config(cfg.prompts, 1, turns_column(cfg))
    rows = prompts.load_rows(first)
    for k in range(1, cfg.rounds + 1):
        prompts.select(prompts.Settings.from_config(cfg.prompts, k, turns_column(cfg)), rows)
    if "evaluate" in cfg.stages():
        held_out = prompts.Settings.from_config(cfg.evaluate.prompts, 1, turns_column(cfg))
        prompts.select(held_out, prompts.load_rows(held_out))


def check_engines(cfg: RunConfig) -> None:
    """Where stages will run, checked before any work: every named interpreter exists, and the vLLM engine
    runs where vLLM is installed. Raises ConfigError naming the setting and the fix."""
    launchers = {name: getattr(cfg, name).launcher for name in ("generate", "score", "prepare", "logprobs", "train", "evaluate")}
    if cfg.sft is not None:
        launchers["sft"] = cfg.sft.launcher
    for launcher in launchers.values():
        interpreter(launcher)
    engines = [("generate", cfg.generate.engine)]
    if cfg.dialogue is not None and cfg.dialogue.user.kind == "llm":
        engines.append(("generate", cfg.dialogue.user.engine))
    if "evaluate" in cfg.stages():
        engines.append(("evaluate", cfg.generate.engine))
    for section, engine in engines:
        launcher = launchers[section]
        if engine == "vllm" and launcher.kind == "inprocess" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                f"[{section}.launcher] the vllm engine runs in this process, where vLLM is not installed. Build "
                f"its environment (`make vllm-env`) and set {section}.launcher: {{kind: subprocess, env: vllm}}."
            )
    tiny = cfg.policy.tiny
    if cfg.generate.engine == "vllm" and cfg.policy.model == "tiny" and tiny.hidden_size // tiny.heads < 32:
        raise ConfigError(
            f"[policy.tiny] head size {tiny.hidden_size // tiny.heads} (hidden_size / heads): vLLM's CPU attention "
            "needs 32 or more. Lower policy.tiny.heads or raise hidden_size."
        )


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


def launcher_problems(launchers) -> list[str]:
    """Launchers whose interpreter is missing."""
    problems = []
    for launcher in launchers:
        try:
            interpreter(launcher)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def engine_problems(cfg: RunConfig) -> list[str]:
    """Every reason this config cannot run on this machine (empty when it can), each with its fix."""
    import torch

    problems = []
    try:
        check_engines(cfg)
    except ConfigError as exc:
        problems.append(str(exc))
    engines = [("generate.vllm", cfg.generate.vllm)] if cfg.generate.engine == "vllm" else []
    user = cfg.dialogue.user if cfg.dialogue is not None else None
    if user is not None and user.kind == "llm" and user.engine == "vllm":
        engines.append(("dialogue.user.vllm", user.vllm))
    gpus = torch.cuda.device_count()
    for where, v in engines:
        if v.tensor_parallel_size > max(gpus, 1):
            problems.append(f"[{where}] tensor_parallel_size {v.tensor_parallel_size} needs that many GPUs; this "
                            f"machine has {gpus}. Run on a GPU machine, or lower tensor_parallel_size.")
    return problems
