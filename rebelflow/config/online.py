"""Online rounds (REBEL's TL;DR and chat experiments, REFUEL setting two): with an `online:` section a
round is a block of `iterations`, each sampling a small batch with the current policy, rewarding it with
a KL penalty against the reference policy, and taking a few regression passes over it. Defaults follow
the papers' code (REFERENCE: "REBEL, online"). `objective: ppo` takes PPO's clipped passes instead, with a
value model (the REBEL seed's TL;DR PPO baseline, REFERENCE: "PPO baseline (TL;DR)")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rebelflow.config.base import Section


class AdaptiveKLConfig(Section):
    """The adaptive KL controller (off unless set): kl_coef moves so the mean KL approaches `target`."""

    target: float = Field(6.0, gt=0, description="the mean KL per response the controller aims at")
    horizon: int = Field(10000, ge=1, description="responses over which the coefficient adapts")


class PPOConfig(Section):
    """PPO in the online loop: a value model beside the policy, per-token rewards (−kl_coef · the token's
    log-ratio, the score at the reply's last token), GAE, clipped policy and value losses."""

    value_init: Literal["policy", "reward"] = Field(
        "policy", description="the value model's start: the policy's backbone with a new scalar head, or the "
                              "reward model (a classifier or value_head reward sharing the policy's vocabulary)")
    minibatch_responses: int = Field(8, ge=1, description="responses per optimizer update within a pass")
    vf_coef: float = Field(0.1, ge=0, description="loss = policy loss + vf_coef · value loss")
    cliprange: float = Field(0.2, gt=0, description="the policy ratio is clipped to 1 ± cliprange")
    cliprange_value: float = Field(0.2, gt=0, description="a value moves at most this far from its rollout value")
    gamma: float = Field(1.0, ge=0, le=1, description="the discount of GAE")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's λ")
    whiten_rewards: bool = Field(True, description="scale the batch's token rewards to unit variance before GAE")


class OnlineConfig(Section):
    objective: Literal["rebel", "ppo"] = Field(
        "rebel", description="rebel: regression on pairs within a prompt; ppo: PPO with a value model (online.ppo)")
    ppo: PPOConfig | None = Field(None, description="objective ppo: its settings (defaults: the REBEL seed's TL;DR PPO)")
    iterations: int = Field(..., ge=1, description="iterations per round (a round stays the unit of caching)")
    prompts_per_iteration: int = Field(32, ge=1)
    samples_per_prompt: int = Field(2, ge=1, description="responses per prompt; REBEL pairs them within a prompt (2 or more)")
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

    @model_validator(mode="before")
    @classmethod
    def _ppo_defaults(cls, data):
        """objective: ppo without a ppo section takes the defaults."""
        if isinstance(data, dict) and data.get("objective") == "ppo" and data.get("ppo") is None:
            return {**data, "ppo": {}}
        return data

    @model_validator(mode="after")
    def _minibatches(self) -> OnlineConfig:
        if self.objective == "ppo":
            responses = self.items_per_iteration()
            if self.ppo.minibatch_responses > responses:
                raise ValueError(
                    f"online.ppo.minibatch_responses ({self.ppo.minibatch_responses}) is more than an iteration's "
                    f"responses ({responses}: prompts_per_iteration × samples_per_prompt). Lower it or raise "
                    "prompts_per_iteration.")
            return self
        if self.ppo is not None:
            raise ValueError("online.ppo configures objective: ppo; set online.objective: ppo or remove online.ppo.")
        if self.samples_per_prompt < 2:
            raise ValueError(f"online.samples_per_prompt is {self.samples_per_prompt}: REBEL regresses on pairs of "
                             "responses to one prompt, so it needs 2 or more (PPO takes 1: online.objective: ppo).")
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

    def items_per_iteration(self) -> int:
        """What an iteration's passes go over: REBEL's pairs, or PPO's responses."""
        if self.objective == "ppo":
            return self.prompts_per_iteration * self.samples_per_prompt
        return self.pairs_per_iteration()

    def minibatch(self) -> int:
        """Items (pairs or responses) per optimizer update."""
        return self.ppo.minibatch_responses if self.objective == "ppo" else self.minibatch_pairs
