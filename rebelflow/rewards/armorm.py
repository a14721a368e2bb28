"""ArmoRM rewards (RLHFlow/ArmoRM-Llama3-8B-v0.1): a multi-objective reward model with a gating layer,
shipped as its own Python code. Its reward is the output's `.score` (roughly in [0, 1], hence REBEL's
large η); a generic sequence-classifier head would read the wrong tensor. Loading runs the model's own
code, so the config must say `trust_remote_code: true` and pin a `revision`; inputs are batched like the
classifier backend's (chat template, left truncation, length-sorted batches with attention masks).
"""

from __future__ import annotations

from rebelflow.config.campaign import RewardConfig
from rebelflow.rewards.classifier import ClassifierReward


def armorm_reward(cfg: RewardConfig) -> ClassifierReward:
    """ArmoRM behind the classifier backend's batching; its reward is the output's `.score`."""
    return ClassifierReward(cfg, read=lambda out: out.score.reshape(-1))
