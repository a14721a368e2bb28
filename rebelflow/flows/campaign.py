"""campaign_flow: the starting policy (tiny build, SFT warm start) and the baseline's evaluation samples,
then rounds in sequence — round k's trained policy is round k+1's policy, the starting policy stays the
evaluation baseline — and a summary across rounds (summary.json and summary.png in the campaign folder)."""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its annotations,
# also in a served run's fresh process, where string annotations cannot be resolved.
from typing import Any

from prefect import flow

from rebelflow.config.campaign import RunConfig
from rebelflow.flows.common import Steps
from rebelflow.flows.diagnostics import diagnose
from rebelflow.flows.progress import PROGRESS
from rebelflow.flows.round import round_flow
from rebelflow.flows.summary import campaign_summary
from rebelflow.flows.ui import publish_campaign, publish_comparison
from rebelflow.planning.campaign import baseline, campaign_jobs
from rebelflow.store.local import Store


@flow(name="campaign", flow_run_name="{cfg.campaign}", log_prints=True)
def campaign_flow(cfg: RunConfig, through: int | None = None) -> dict[str, Any]:
    """Rounds 1..`through` (all by default); finished stages come back cached."""
    store = Store(cfg.store.root)
    last = min(through or cfg.rounds, cfg.rounds)
    PROGRESS.start([(j.round, j.name) for j in campaign_jobs(cfg) if j.round <= last])
    base = baseline(cfg)
    step = Steps(cfg.campaign, store, cfg.hub, cfg.tracking)
    for job in base.jobs:  # the starting policy (tiny build, SFT) and the baseline's evaluation samples
        step(job)
    records, policy, evaluations, online, judged = step.records, base.policy, [], [], {}
    for k in range(1, last + 1):
        out = round_flow(cfg, k, policy, base.eval_prompts, base.eval_scored, base.policy)
        records += out["records"]
        policy = out["policy"]
        if out["evaluation"] is not None:
            evaluations.append((k, out["evaluation"]))
        if out.get("judged") is not None:
            judged[k] = out["judged"]
        if cfg.online is not None:
            online.append((k, policy))
    summary = None
    if base.eval_scored is not None:
        summary = campaign_summary(store, cfg.campaign, base.eval_scored, evaluations, cfg.dialogue is not None, online,
                                   judged, round_diagnostics(store, records),
                                   cfg.variant.model_dump() if cfg.variant else None, [r["id"] for r in records])
    publish_campaign(cfg.campaign, records, summary, store)
    if summary is not None:
        publish_comparison(cfg.variant.of if cfg.variant else cfg.campaign, store)
    return {"records": records, "summary": summary, "policy": policy}


def round_diagnostics(store: Store, records: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Per round (1..), what looks wrong in it, from its stages' manifests (only read: each step verified its
    artifact when it ran, and hashing every model again at the end would take minutes for 8B weights)."""
    by_round: dict[int, dict[str, Any]] = {}
    for r in records:
        if r["round"] >= 1 and r["status"] != "failed":
            by_round.setdefault(r["round"], {})[r["stage"]] = store.manifest(store.find(r["id"]))
    return {k: diagnose(manifests) for k, manifests in by_round.items()}
