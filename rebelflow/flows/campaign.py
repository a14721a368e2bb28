"""campaign_flow: the starting policy, then rounds in sequence, each round's policy being the previous
round's trained model (training arrives in the next release; until then a campaign has one round)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from rebelflow.artifacts import Store
from rebelflow.config import RunConfig
from rebelflow.flows.common import run_stage
from rebelflow.flows.round import round_flow
from rebelflow.plan import initial_policy
from rebelflow.tasks.ui import publish_campaign


@flow(name="campaign", flow_run_name="{cfg.campaign}", log_prints=True)
def campaign_flow(cfg: RunConfig) -> list[dict[str, Any]]:
    store = Store(cfg.store.root)
    build, policy = initial_policy(cfg)
    records = [run_stage(cfg.campaign, build, store)] if build else []
    for k in range(1, cfg.rounds + 1):
        records += round_flow(cfg, k, policy)
    publish_campaign(cfg.campaign, records)
    return records
