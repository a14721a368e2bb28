"""round_flow: one REBEL (or REFUEL) round, step by step as the algorithm runs.

Each step is a stage job from the plan (`planning.campaign.round_plan`, the one source of fingerprints);
a step whose artifact is already in the store comes back Cached, and a step past `stop_after` is None
and skipped. For dialogues (REFUEL) the same steps run the multi-turn stages.
"""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its annotations,
# also in a served run's fresh process, where string annotations cannot be resolved.
from typing import Any

from prefect import flow

from rebelflow.config.campaign import RunConfig
from rebelflow.flows.common import Steps
from rebelflow.planning.campaign import Baseline, round_plan
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef


@flow(name="round", flow_run_name="{cfg.campaign}-round-{k}", log_prints=True)
def round_flow(
    cfg: RunConfig, k: int, policy: ArtifactRef, eval_prompts: ArtifactRef | None, baseline_scored: ArtifactRef | None,
    initial: ArtifactRef | None = None,
) -> dict[str, Any]:
    base = Baseline(policy=initial, eval_prompts=eval_prompts, eval_scored=baseline_scored)
    plan = round_plan(cfg, k, policy, base)
    step = Steps(cfg.campaign, Store(cfg.store.root), cfg.hub, cfg.tracking)
    step(plan.prompts)  # this round's slice of the prompt set
    step(plan.online)  # online rounds: all iterations of sample → score → regress, with engines resident
    step(plan.generate)  # n samples per prompt from the policy (two dialogues branching at turn h for REFUEL)
    step(plan.score)  # a reward per response (per turn for dialogues)
    step(plan.prepare)  # best against worst, tokenized with loss masks on the replies
    step(plan.logprobs)  # π_old of every pair, from the trainer's own forward pass
    step(plan.train)  # regress log-ratio differences onto η × reward differences: the next policy
    step(plan.eval_generate)  # the new policy on the held-out prompts
    step(plan.eval_score)
    evaluation = step(plan.evaluate)  # the new policy against the baseline: win rate, rewards
    judged = step(plan.judge)  # the same pairs judged by an LLM judge, both orders (evaluate.judge)
    return {"records": step.records, "policy": plan.policy or policy, "evaluation": evaluation, "judged": judged}
