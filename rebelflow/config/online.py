"""Online rounds (REBEL's TL;DR and chat experiments, REFUEL setting two): with an `online:` section a
round is a block of `iterations`, each sampling a small batch with the current policy, rewarding it with
a KL penalty against the reference policy, and taking a few regression passes over it. Defaults follow
the papers' code (REFERENCE: "REBEL, online")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rebelflow.config.base import Section


class AdaptiveKLConfig(Section):
    """The adaptive KL controller (off unless set): kl_coef moves so the mean KL approaches `target`."""

    target: float = Field(6.0, gt=0, description="the mean KL per response the controller aims at")
    horizon: int = Field(10000, ge=1, description="responses over which the coefficient adapts")


class OnlineConfig(Section):
    iterations: int = Field(..., ge=1, description="iterations per round (a round stays the unit of caching)")
    prompts_per_iteration: int = Field(32, ge=1)
    samples_per_prompt: int = Field(2, ge=2, description="responses per prompt; pairs are formed within a prompt")
    epochs_per_iteration: int = Field(4, ge=1, description="regression passes over each iteration's pairs")
    minibatch_pairs: int = Field(8, ge=1, description="pairs per optimizer update within a pass")
    kl_coef: float = Field(0.05, ge=0, description="reward = score/reward_scale − kl_coef · KL(π_old ‖ π_ref)")
    adaptive_kl: AdaptiveKLConfig | None = None
    penalty_reward_value: float | None = Field(
        -1.0, description="the score of a response without end-of-turn (None: score it as it is)"
    )
    reward_scale: float = Field(1.0, gt=0, description="the reward model's score is divided by this")
    forced_length: bool = Field(
        False, description="generate exactly max_new_tokens (end-of-turn allowed), then cut after the first one"
    )
    lr_schedule: Literal["linear", "cosine"] = Field(
        "linear", description="over all updates of the campaign: linear anneal to 0, or cosine after warmup"
    )
    validate_every: int = Field(10, ge=1, description="iterations between validations on held-out prompts")
    validation_prompts: int = Field(32, ge=1)
    validation_temperature: float = Field(0.01, ge=0)
    checkpoint_every: int = Field(10, ge=1, description="iterations between resumable checkpoints")
    seed: int = 0

    @model_validator(mode="after")
    def _minibatches(self) -> OnlineConfig:
        pairs = self.prompts_per_iteration * (self.samples_per_prompt // 2)
        if self.minibatch_pairs > pairs:
            raise ValueError(
                f"minibatch_pairs ({self.minibatch_pairs}) is more than an iteration's pairs ({pairs}: "
                f"prompts_per_iteration × samples_per_prompt / 2). Lower minibatch_pairs or raise "
                "prompts_per_iteration."
            )
        return self

    def pairs_per_iteration(self) -> int:
        """Samples are paired within a prompt: (1, 2), (3, 4), …"""
        return self.prompts_per_iteration * (self.samples_per_prompt // 2)
