"""Thin Prefect tasks around stages. The cache key is the stage fingerprint (plus the store). Callers run
the task with `refresh_cache` when the store lacks a complete, verified artifact (see `task_for`), so a
deleted or corrupt artifact is made again instead of being "cached". Retries, with backoff, happen for
transient errors only (config.errors.is_transient: the network, HTTP 429/5xx, a lost worker), never for config
or data errors or bugs, whichever launcher ran the stage. The persisted result is the small ArtifactRef."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.concurrency.sync import concurrency
from prefect.logging import get_run_logger

from rebelflow.config.errors import is_transient
from rebelflow.planning.jobs import StageJob
from rebelflow.running.launch import launch
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef


class StageCache(CachePolicy):
    """Key = hash of the store root + the stage fingerprint."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str:
        store_hash = hashlib.sha256(str(Store(inputs["store_root"]).root).encode()).hexdigest()[:12]
        return f"{store_hash}-{inputs['job'].ref.id}"


def transient_only(task, task_run, state) -> bool:
    """Retry what may pass on its own (config.errors.is_transient: the network, 5xx, a lost worker); never
    config, data or code errors, whichever launcher ran the stage (retrying those only repeats the failure)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return exc is not None and is_transient(exc)


@task(
    name="stage",
    task_run_name="{job.name}-r{job.round}",
    cache_policy=StageCache(),
    persist_result=True,
    result_serializer="json",
    retries=2,
    retry_delay_seconds=[10, 60],  # backoff
    retry_condition_fn=transient_only,
)
def stage_task(job: StageJob, store_root: str) -> ArtifactRef:
    logger = get_run_logger()
    logger.info("%s round %d -> %s", job.name, job.round, job.ref.id)
    if Store(store_root).is_complete(job.ref):  # made by another run, machine or PREFECT_HOME: nothing to launch
        logger.info("%s round %d: complete in the store", job.name, job.round)
        return job.ref
    if not uses_accelerator(job):
        return launch(job, Store(store_root), emit=logger.info)
    # Stages that load a model take a slot of the global concurrency limit (`gpu`, made by `rebelflow
    # deploy`), so two runs never load models onto the same GPUs at once; without the limit this is a no-op.
    with concurrency(accelerator_limit(), occupy=1, strict=False, raise_on_lease_renewal_failure=False):
        return launch(job, Store(store_root), emit=logger.info)


MODEL_STAGES = {"generate", "generate_dialogues", "score", "score_dialogues", "logprobs", "train", "sft",
                "rm_train", "rm_eval"}


def uses_accelerator(job: StageJob) -> bool:
    """Stages that load a model onto the GPUs (a rule reward loads none)."""
    if job.stage not in MODEL_STAGES:
        return False
    reward = job.settings.get("reward")
    return not (isinstance(reward, dict) and reward.get("backend") == "rule")


def accelerator_limit() -> str:
    """The global concurrency limit model stages take: $REBELFLOW_GPU_LIMIT, default `gpu`."""
    return os.environ.get("REBELFLOW_GPU_LIMIT", "gpu")


def task_for(job: StageJob, missing: bool):
    """The stage task under its UI name (e.g. `generate_task`); with `missing` (the store has no complete
    and verified artifact) it re-runs whatever Prefect's cache holds."""
    return stage_task.with_options(name=f"{job.name}_task", refresh_cache=missing)
