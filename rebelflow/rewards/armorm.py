"""ArmoRM rewards (RLHFlow/ArmoRM-Llama3-8B-v0.1): a multi-objective reward model with a gating layer,
shipped as its own Python code. Its reward is the output's `.score` (roughly in [0, 1], hence REBEL's
large η); a generic sequence-classifier head would read the wrong tensor. Loading runs the model's own
code, so the config must say `trust_remote_code: true` and pin a `revision`; inputs are batched like the
classifier backend's (chat template, left truncation, length-sorted batches with attention masks).
"""

from __future__ import annotations

from rebelflow.config.campaign import RewardConfig
from rebelflow.rewards.base import Message, Reward
from rebelflow.rewards.classifier import batched_scores, load_model, load_tokenizer


class ArmoRMReward:
    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg)
        self.model = load_model(cfg, self.tokenizer.pad_token_id)

    def score(self, items: list[tuple[list[Message], str]]) -> list[Reward]:
        dev = self.model.device
        return batched_scores(
            self.cfg, self.tokenizer, items,
            lambda ids, mask: self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).score.reshape(-1),
        )
