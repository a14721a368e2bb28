"""Reward backends behind one interface: `rule` (a Python callable), `classifier` (a sequence classifier
whose logit is the reward) and `armorm` (ArmoRM's remote code; the reward is its `.score`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from rebelflow.config.campaign import RewardConfig
from rebelflow.config.errors import ConfigError
from rebelflow.store.refs import model_identity

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


class RankSharded:
    """A backend shared out over the ranks of a multi-process launch (one per GPU): each rank scores every
    ranks-th item (so each gets a similar mix of lengths) and every rank gets all rewards back in order."""

    def __init__(self, backend: RewardBackend, ranks):
        self.backend, self.ranks = backend, ranks

    def score(self, items: list[tuple[list[Message], str]]) -> list[Reward]:
        from rebelflow.ml.distributed import gather_lists

        mine = self.backend.score(items[self.ranks.index :: self.ranks.count])
        out: list[Reward] = [Reward(math.nan)] * len(items)
        for index, part in enumerate(gather_lists(self.ranks, mine)):
            out[index :: self.ranks.count] = part
        return out


def load_reward(cfg: RewardConfig, ranks=None) -> RewardBackend:
    """The configured backend; shared out over the processes of a launch when `ranks` (training.Ranks) is given."""
    backend = _load(cfg)
    return RankSharded(backend, ranks) if ranks is not None and ranks.count > 1 else backend


def _load(cfg: RewardConfig) -> RewardBackend:
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
        from rebelflow.config.callables import source_hash

        return source_hash(cfg.function)
    return model_identity(cfg.model, cfg.revision)
