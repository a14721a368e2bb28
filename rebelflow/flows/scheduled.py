"""Flows for deployments: their parameters are a config file's path, `--set` overrides and a store, never
a config object or a secret, so every run reads the file as it is then and the UI shows a short form.

- `next_round_flow`: one step of a scheduled campaign. It runs the first round that is not complete in
  the store (a failed round resumes at its failed stage; rounds before it come back cached), so a
  deployment on a schedule advances the campaign a round per trigger; with every round done it does
  nothing.
- `rounds_flow`: the campaign through round k (k = all rounds by default): `rebelflow run` as a deployment.
- `reward_model_entry`: rm-train or rm-eval of a reward-model config.
"""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its annotations,
# also in a served run's fresh process, where string annotations cannot be resolved.
from typing import Any

from prefect import flow

from rebelflow.config.errors import RebelflowError
from rebelflow.config.loading import load_config
from rebelflow.flows.campaign import campaign_flow
from rebelflow.flows.reward_model import reward_model_flow
from rebelflow.flows.summary import final_policy_note
from rebelflow.planning.campaign import name_variant, plan_status
from rebelflow.planning.preflight import preflight


def next_round(cfg) -> int | None:
    """The first round with a stage not complete in the store (1 if only the starting policy is missing);
    None when the whole campaign is done."""
    pending = [row["round"] for row in plan_status(cfg) if row["status"] == "pending"]
    return None if not pending else max(1, min(pending))


def load_run(config: str, overrides: list[str], store: str | None):
    """The campaign under `overrides`, a variant of the file's campaign when they change its results (as
    `rebelflow run` names it)."""
    cfg = load_config(config, overrides, store)
    try:
        base = load_config(config, [], store) if overrides else None
    except RebelflowError:
        base = None
    return name_variant(cfg, base, overrides)


def _say_policy(policy, store_root) -> None:
    note = final_policy_note(policy, store_root)
    if note is not None:  # an external policy: no round trained
        print(note)


@flow(name="campaign-next-round", log_prints=True)
def next_round_flow(config: str, overrides: list[str] | None = None, store: str | None = None) -> dict[str, Any]:
    cfg = load_run(config, overrides or [], store)
    preflight(cfg)
    k = next_round(cfg)
    if k is None:
        print(f"campaign {cfg.campaign}: all {cfg.rounds} rounds are complete in {cfg.store.root}; nothing to run")
        return {"campaign": cfg.campaign, "round": None}
    print(f"campaign {cfg.campaign}: running round {k} of {cfg.rounds}")
    result = campaign_flow(cfg, through=k)
    _say_policy(result["policy"], cfg.store.root)
    return {"campaign": cfg.campaign, "round": k, "summary": result["summary"]}


@flow(name="campaign-rounds", log_prints=True)
def rounds_flow(config: str, through: int | None = None, overrides: list[str] | None = None,
                store: str | None = None) -> dict[str, Any]:
    cfg = load_run(config, overrides or [], store)
    preflight(cfg)
    result = campaign_flow(cfg, through=through)
    _say_policy(result["policy"], cfg.store.root)
    return {"campaign": cfg.campaign, "summary": result["summary"]}


@flow(name="reward-model-entry", log_prints=True)
def reward_model_entry(config: str, mode: str = "train", overrides: list[str] | None = None,
                       store: str | None = None) -> dict[str, Any]:
    from rebelflow.config.reward_model import RMConfig

    cfg = load_config(config, overrides or [], store, root=RMConfig)
    return reward_model_flow(cfg, mode)["summary"]
