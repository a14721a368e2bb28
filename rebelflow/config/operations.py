"""Configuration of the operations around a campaign: experiment tracking (wandb) and artifacts on the
Hub. Re-exported by config.campaign, where RunConfig uses them."""

from __future__ import annotations

import hashlib
import re
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


# --set keys that cannot change what a campaign computes: a run that overrides only these is the campaign
# itself (more rounds, another store, tracking, Hub copies, launchers, checkpoint and evaluation cadence)
SAME_RUN_SECTIONS = ("campaign", "rounds", "store", "hub", "tracking", "variant")
SAME_RUN_KEYS = ("launcher", "checkpoint_every", "eval_every")


class VariantConfig(Section):
    """A run of a campaign under `--set` overrides that change its results. The loader sets it (a config file
    does not): the variant has its own name, campaign index and summary, so it never overwrites the
    campaign's or another variant's, and `rebelflow compare` labels it by its overrides."""

    of: str = Field(..., description="the campaign it varies")
    overrides: list[str] = Field(..., min_length=1, description="the --set items that make it, e.g. train.eta=3")

    @staticmethod
    def from_overrides(campaign: str, overrides: list[str]) -> VariantConfig | None:
        """The variant that `overrides` make of `campaign` (None when they cannot change a result); each
        key counts once (its last value) and keys are sorted, so the order of --set items does not matter."""
        latest: dict[str, str] = {}
        for item in overrides:
            key, _, value = item.partition("=")
            parts = key.strip().split(".")
            if parts[0] not in SAME_RUN_SECTIONS and not set(parts) & set(SAME_RUN_KEYS):
                latest[key.strip()] = value.strip()
        kept = [f"{k}={latest[k]}" for k in sorted(latest)]
        return VariantConfig(of=campaign, overrides=kept) if kept else None

    def name(self) -> str:
        """The variant's campaign name: `<campaign>--<overrides>`, e.g. demo-rebel--train.eta-3 (a hash of
        the overrides instead when that is longer than a campaign name may be)."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(self.overrides)).strip("-")
        name = f"{self.of}--{slug}"
        if len(name) <= 64:
            return name
        return f"{self.of[:52]}--{hashlib.sha256(chr(10).join(self.overrides).encode()).hexdigest()[:8]}"

    def label(self) -> str:
        return " ".join(self.overrides)
