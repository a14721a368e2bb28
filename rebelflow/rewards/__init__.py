"""Reward backends behind one interface: `rule` (a Python callable), `classifier` (a sequence classifier
whose logit is the reward) and `armorm` (ArmoRM's remote code; the reward is its `.score`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from rebelflow.artifacts import model_identity
from rebelflow.config import RewardConfig
from rebelflow.errors import ConfigError

Message = dict[str, str]


@dataclass(frozen=True)
class Reward:
    value: float  # NaN when invalid
    invalid_reason: str | None = None


class RewardBackend(Protocol):
    def score(self, items: list[tuple[list[Message], str]]) -> list[Reward]:
        """One Reward per (conversation so far, assistant response)."""
        ...


def checked(value: object) -> Reward:
    """Turn a backend's raw output into a Reward, marking non-numbers and NaN/inf as invalid."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Reward(math.nan, f"reward is {type(value).__name__}, not a number")
    if not math.isfinite(value):
        return Reward(math.nan, f"reward is {value}")
    return Reward(float(value))


def load_reward(cfg: RewardConfig) -> RewardBackend:
    if cfg.backend == "rule":
        from rebelflow.rewards.rule import RuleReward

        return RuleReward(cfg.function)
    if cfg.backend == "classifier":
        from rebelflow.rewards.classifier import ClassifierReward

        return ClassifierReward(cfg)
    if cfg.backend == "armorm":
        from rebelflow.rewards.armorm import ArmoRMReward

        return ArmoRMReward(cfg)
    raise ConfigError(f"[reward.backend] unknown backend {cfg.backend!r}. Valid backends: rule, classifier, armorm.")


def reward_identity(cfg: RewardConfig) -> str:
    """What names the reward's behaviour: the rule's source file hash, or the classifier's files."""
    if cfg.backend == "rule":
        from rebelflow.callables import source_hash

        return source_hash(cfg.function)
    return model_identity(cfg.model, cfg.revision)
