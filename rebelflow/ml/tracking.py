"""Optional experiment tracking with Weights & Biases: one wandb run per stage that ran, grouped by
campaign — training stages (train, sft, rm_train) log a point per optimizer update, the others their
summary (flows.common.run_stage). Off unless the
config has `tracking.wandb`; `mode: offline` (the demos' choice) writes runs under `<store>/wandb` for a
later `wandb sync`. The API key is read by wandb from WANDB_API_KEY and never passes through rebelflow.
Tracking never enters a fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rebelflow.config.campaign import TrackingConfig


def run_info(tracking: TrackingConfig, store_root: str, group: str, name: str, job_type: str) -> dict | None:
    """What a stage needs to open its wandb run (None: no tracking)."""
    w = tracking.wandb
    if w is None or w.mode == "disabled":
        return None
    return {"project": w.project, "entity": w.entity, "mode": w.mode, "tags": list(w.tags), "group": group,
            "name": name, "job_type": job_type, "dir": w.dir or str(Path(store_root) / "wandb")}


class Tracker:
    """A wandb run, or nothing when tracking is off (every method is then a no-op)."""

    def __init__(self, info: dict | None, config: dict[str, Any] | None = None):
        self.run = None
        if info is None:
            return
        import wandb

        Path(info["dir"]).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(**info, config=config or {}, reinit="create_new")

    def log(self, row: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        if self.run is None:
            return
        for key, value in (summary or {}).items():
            if isinstance(value, (int, float, str)) or value is None:
                self.run.summary[key] = value
        self.run.finish()
