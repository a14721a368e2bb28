"""round_flow: one REBEL round — prompts → generate n samples → score each → pair best against worst
(prepare). Training, logprobs and evaluation follow in the next release."""

from __future__ import annotations

from typing import Any

from prefect import flow

from rebelflow.artifacts import ArtifactRef, Store
from rebelflow.config import RunConfig
from rebelflow.flows.common import run_stage
from rebelflow.plan import round_jobs


@flow(name="round", flow_run_name="{cfg.campaign}-round-{k}", log_prints=True)
def round_flow(cfg: RunConfig, k: int, policy: ArtifactRef) -> list[dict[str, Any]]:
    store = Store(cfg.store.root)
    # Each job knows its inputs' fingerprints; a stage whose artifact is in the store comes back Cached.
    return [run_stage(cfg.campaign, job, store) for job in round_jobs(cfg, k, policy)]
