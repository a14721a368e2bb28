"""A stage job: one stage of one round, fully determined — what the plan lists, the flows run and the
launcher hands to a stage process. Its `ref` (the artifact id) comes from `store.refs.artifact_ref`, the
same function each stage's `run` calls."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from pydantic import BaseModel, ConfigDict

from rebelflow.config.campaign import LauncherConfig
from rebelflow.store.refs import ArtifactRef, artifact_ref


class StageJob(BaseModel):
    """One stage of one round, fully determined: what the launcher hands to a stage process."""

    model_config = ConfigDict(frozen=True)

    stage: str  # the stage module
    name: str  # what the plan and the UI call it, e.g. "eval_generate" for the generate module
    round: int
    settings: dict[str, Any]
    inputs: list[ArtifactRef]
    ref: ArtifactRef
    launcher: LauncherConfig = LauncherConfig()


def make_job(
    module: ModuleType, round_k: int, settings: BaseModel, inputs: list[ArtifactRef], launcher=None, name=None
) -> StageJob:
    return StageJob(
        stage=module.NAME,
        name=name or module.NAME,
        round=round_k,
        settings=settings.model_dump(mode="json"),
        inputs=inputs,
        ref=artifact_ref(module.NAME, module.VERSION, module.KIND, settings, inputs),
        launcher=launcher or LauncherConfig(),
    )
