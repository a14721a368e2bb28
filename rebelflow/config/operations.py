"""Configuration of the operations around a campaign: experiment tracking (wandb) and artifacts on the
Hub. Re-exported by config.campaign, where RunConfig uses them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rebelflow.config.base import Section


class WandbConfig(Section):
    """Weights & Biases tracking (rebelflow/ml/tracking.py); the key comes from WANDB_API_KEY, never the config."""

    project: str | None = Field(None, description="the wandb project (required unless mode is disabled)")
    entity: str | None = Field(None, description="team or user (default: the API key's)")
    mode: Literal["online", "offline", "disabled"] = Field("offline", description="offline: sync later")
    dir: str | None = Field(None, description="where runs are written (default: <store>/wandb)")
    tags: list[str] = []

    @model_validator(mode="after")
    def _project(self) -> WandbConfig:
        if self.project is None and self.mode != "disabled":
            raise ValueError(f"mode {self.mode} logs runs to a wandb project: set tracking.wandb.project.")
        return self


class TrackingConfig(Section):
    wandb: WandbConfig | None = None


class HubConfig(Section):
    """Artifacts on the Hugging Face Hub (rebelflow/store/hub.py). The token comes from $HF_TOKEN, the endpoint from
    $HF_ENDPOINT; neither belongs in a config."""

    dataset_repo: str = Field(..., pattern=r"^[\w.-]+/[\w.-]+$", description="owner/name of a dataset repo")
    model_repo: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$",
                                   description="owner/name of a model repo (default: <dataset_repo>-models)")
    private: bool = True

    @model_validator(mode="after")
    def _model_repo(self) -> HubConfig:
        if self.model_repo is None:
            self.model_repo = f"{self.dataset_repo}-models"
        return self
