"""Reward backends behind one interface: `rule` (a Python callable), `classifier` (a sequence classifier
whose logit is the reward), `armorm` (ArmoRM's remote code; the reward is its `.score`) and `value_head` (a
backbone and a linear head read from one checkpoint's files: REBEL's TL;DR reward model, Starling-RM)."""

from __future__ import annotations

from rebelflow.config.campaign import RewardConfig
from rebelflow.config.errors import ConfigError
from rebelflow.rewards.base import Message, RankSharded, Reward, RewardBackend, checked
from rebelflow.store.refs import model_identity

__all__ = ["Message", "Reward", "RewardBackend", "checked", "load_reward", "reward_identity"]


def load_reward(cfg: RewardConfig, ranks=None) -> RewardBackend:
    """The configured backend; shared out over the processes of a launch when `ranks` (ml.distributed.Ranks) is given."""
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
        from rebelflow.rewards.armorm import armorm_reward

        return armorm_reward(cfg)
    if cfg.backend == "value_head":
        from rebelflow.rewards.value_head import ValueHeadReward

        return ValueHeadReward(cfg)
    raise ConfigError(f"[reward.backend] unknown backend {cfg.backend!r}. Valid backends: rule, classifier, armorm, value_head.")


def reward_identity(cfg: RewardConfig) -> str:
    """What names the reward's behaviour: the rule's source file hash, or the classifier's files."""
    if cfg.backend == "rule":
        from rebelflow.config.callables import source_hash

        return source_hash(cfg.function)
    return model_identity(cfg.model, cfg.revision)
