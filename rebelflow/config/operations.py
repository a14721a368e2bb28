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


# --set keys left out of a variant's label (a run of the campaign in another store, with more rounds, other
# tracking, Hub copies, launchers, checkpoint and evaluation cadence) unless they alone change its results
SAME_RUN_SECTIONS = ("campaign", "rounds", "store", "hub", "tracking", "variant")
SAME_RUN_KEYS = ("launcher", "checkpoint_every", "eval_every")


class VariantConfig(Section):
    """A run of a campaign under `--set` overrides that change its results (planning.campaign.load_run sets it,
    a config file does not): the variant has its own name, campaign index and summary, so it never
    overwrites the campaign's or another variant's, and `rebelflow compare` labels it by its overrides."""

    of: str = Field(..., description="the campaign it varies")
    overrides: list[str] = Field(..., min_length=1, description="the --set items that make it, e.g. train.eta=3")

    @staticmethod
    def from_overrides(campaign: str, overrides: list[str]) -> VariantConfig | None:
        """The variant's label: each key once (its last value), keys sorted, so the order of --set items does
        not matter; operational keys (SAME_RUN_*) only when nothing else is overridden."""
        latest: dict[str, str] = {}
        for item in overrides:
            key, _, value = item.partition("=")
            if key.strip().split(".")[0] not in ("store", "campaign", "variant"):
                latest[key.strip()] = value.strip()
        kept = [k for k in latest if k.split(".")[0] not in SAME_RUN_SECTIONS and not set(k.split(".")) & set(SAME_RUN_KEYS)]
        chosen = sorted(kept or latest)
        return VariantConfig(of=campaign, overrides=[f"{k}={latest[k]}" for k in chosen]) if chosen else None

    def name(self) -> str:
        """The variant's campaign name: `<campaign>--<overrides>`, e.g. demo-rebel--train.eta-3; a hash of the
        campaign and overrides instead when the overrides hold characters a name cannot (paths) or the name
        would pass 64 characters, so two variants never share a name."""
        text = "_".join(o.replace("=", "-", 1) for o in self.overrides)
        name = f"{self.of}--{text}"
        if re.fullmatch(r"[A-Za-z0-9._-]+", text) and len(name) <= 64:
            return name
        digest = hashlib.sha256("\n".join([self.of, *self.overrides]).encode()).hexdigest()[:8]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
        return f"{self.of[:40]}--{slug[:max(0, 53 - len(self.of[:40]) - 2)]}_{digest}"

    def label(self) -> str:
        return " ".join(self.overrides)
