"""Where a stage runs (in this process, a subprocess, or `accelerate launch`): never part of a fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rebelflow.config.base import Section


class LauncherConfig(Section):
    """Where a stage runs. Not part of any fingerprint: it changes how, not what, a stage computes."""

    kind: Literal["inprocess", "subprocess", "accelerate"] = "inprocess"
    python: str | None = Field(None, description="interpreter for subprocess/accelerate (default: this one)")
    env: str | None = Field(
        None, description="a named environment instead of python: .venv-<env>/bin/python, e.g. vllm (make vllm-env)"
    )
    num_processes: int | None = Field(
        None, ge=1, description="accelerate: processes, one per GPU (default: the config_file's, else 1)"
    )
    config_file: str | None = Field(None, description="accelerate: a launch config, e.g. configs/accelerate/*.yaml")

    @model_validator(mode="after")
    def _where(self) -> LauncherConfig:
        if self.python and self.env:
            raise ValueError(f"set python ({self.python!r}) or env ({self.env!r}), not both: both name the interpreter.")
        if self.kind == "inprocess" and (self.python or self.env):
            raise ValueError(
                "another interpreter needs another process: set kind: subprocess (or accelerate) with python/env."
            )
        if self.kind != "accelerate" and (self.config_file or self.num_processes):
            raise ValueError("num_processes and config_file are accelerate options: set kind: accelerate.")
        return self

    def processes(self) -> int:
        """The processes this launch starts: num_processes, else the accelerate config file's, else 1."""
        if self.kind != "accelerate":
            return 1
        if self.num_processes:
            return self.num_processes
        if self.config_file and Path(self.config_file).is_file():
            import yaml

            n = (yaml.safe_load(Path(self.config_file).read_text()) or {}).get("num_processes")
            if isinstance(n, int) and n >= 1:
                return n
        return 1
