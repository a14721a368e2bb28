"""The campaign plan: every stage job of every round with its fingerprint, computed without doing work.

`rebelflow plan`, the flows and `python -m rebelflow.stages.<name> CONFIG` all build jobs here, so the
three agree on what an artifact's fingerprint is.
"""

from __future__ import annotations

from rebelflow import stages
from rebelflow.artifacts import ArtifactRef, Store, external_model
from rebelflow.config import RunConfig
from rebelflow.rewards import reward_identity
from rebelflow.stages import StageJob, generate, prepare, prompts, score, tiny_model


def initial_policy(cfg: RunConfig) -> tuple[StageJob | None, ArtifactRef]:
    """The job that builds the starting policy (None for an existing model) and the policy's ref."""
    if cfg.policy.model == "tiny":
        job = stages.make_job(tiny_model, 0, cfg.policy.tiny, [])
        return job, job.ref
    return None, external_model(cfg.policy.model, cfg.policy.revision)


def round_jobs(cfg: RunConfig, k: int, policy: ArtifactRef) -> list[StageJob]:
    """Round k's stages in order, up to `stop_after`, starting from `policy`."""
    wanted = cfg.stages()
    jobs = [stages.make_job(prompts, k, prompts.Settings.from_config(cfg.prompts, k), [])]
    if "generate" in wanted:
        settings = generate.Settings(**cfg.generate.model_dump())
        jobs.append(stages.make_job(generate, k, settings, [jobs[-1].ref, policy], cfg.generate.launcher))
    if "score" in wanted:
        settings = score.Settings(
            reward=cfg.reward,
            reward_identity=reward_identity(cfg.reward),
            shard_size=cfg.score.shard_size,
            launcher=cfg.score.launcher,
        )
        jobs.append(stages.make_job(score, k, settings, [jobs[-1].ref], cfg.score.launcher))
    if "prepare" in wanted:
        settings = prepare.Settings(**cfg.prepare.model_dump())
        jobs.append(stages.make_job(prepare, k, settings, [jobs[-1].ref, policy], cfg.prepare.launcher))
    return jobs


def campaign_jobs(cfg: RunConfig) -> list[StageJob]:
    start, policy = initial_policy(cfg)
    jobs = [start] if start else []
    for k in range(1, cfg.rounds + 1):
        jobs += round_jobs(cfg, k, policy)
    return jobs


def plan_status(cfg: RunConfig) -> list[dict]:
    """Per job: round, stage, fingerprint and `cached` (complete, verified, inputs unchanged) or
    `pending`. A stage downstream of a pending one is pending: it will be made again from the new input."""
    store = Store(cfg.store.root)
    pending: set[str] = set()
    out = []
    for j in campaign_jobs(cfg):
        if any(r.id in pending for r in j.inputs) or not store.is_complete(j.ref):
            pending.add(j.ref.id)
        status = "pending" if j.ref.id in pending else "cached"
        out.append({"round": j.round, "stage": j.stage, "fingerprint": j.ref.id, "status": status})
    return out


def preflight(cfg: RunConfig) -> None:
    """Checks that need the data but no model: every round's prompt slice exists and is usable.
    Raises DataError before any stage starts (cheap: reads the prompt source once)."""
    first = prompts.Settings.from_config(cfg.prompts, 1)
    rows = prompts.load_rows(first)
    for k in range(1, cfg.rounds + 1):
        prompts.select(prompts.Settings.from_config(cfg.prompts, k), rows)
