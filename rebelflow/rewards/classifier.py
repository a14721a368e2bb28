"""Classifier rewards: any `AutoModelForSequenceClassification` with one label; the reward is its logit.

Inputs are the chat-templated conversation with the response as the last assistant turn, truncated
from the left (the end of a conversation decides its score), sorted by length and batched with
attention masks. The pad token must be a real token, not EOS: the model finds each sequence's last
token by looking for the pad id, and an EOS pad makes it read the wrong position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rebelflow.config.campaign import RewardConfig
from rebelflow.config.errors import ConfigError
from rebelflow.ml.batching import right_padded
from rebelflow.ml.chat import encode, render, with_template
from rebelflow.ml.models import DTYPES, device
from rebelflow.rewards.base import Message, Reward, checked


def load_tokenizer(cfg: RewardConfig):
    """The reward model's tokenizer with a real pad token (never EOS), or a ConfigError saying how to fix it."""
    from transformers import AutoTokenizer

    tokenizer = with_template(AutoTokenizer.from_pretrained(
        cfg.tokenizer or cfg.model, revision=None if cfg.tokenizer else cfg.revision,
        trust_remote_code=cfg.trust_remote_code), cfg.chat_template)
    if cfg.pad_token is not None:
        if cfg.pad_token not in tokenizer.get_vocab():
            raise ConfigError(f"[reward.pad_token] {cfg.pad_token!r} is not in the vocabulary of {cfg.model}.")
        tokenizer.pad_token = cfg.pad_token
    pad = tokenizer.pad_token_id
    if pad is None or pad == tokenizer.eos_token_id:
        raise ConfigError(
            f"[reward.model] the tokenizer of {cfg.model} has {'no pad token' if pad is None else 'EOS as pad'}; "
            "with it the classifier reads the wrong position and scores responses alike. Set "
            "reward.pad_token to an unused vocabulary token (e.g. a reserved special token)."
        )
    return tokenizer


def reward_ids(tokenizer, messages: list[Message], response: str, max_length: int) -> list[int]:
    """What a reward model reads: the chat-templated conversation ending in `response` (the template holds
    the one BOS), truncated from the left to `max_length` tokens, since the end decides the score."""
    text = render(tokenizer, [*messages, {"role": "assistant", "content": response}], False)
    return encode(tokenizer, text)[-max_length:]


@torch.inference_mode()
def batched_scores(cfg: RewardConfig, tokenizer, items: list[tuple[list[Message], str]], forward) -> list[Reward]:
    """Score (conversation, response) items: chat-templated, truncated from the left, sorted by length and
    right-padded per batch with attention masks. `forward(ids, mask)` returns one score per row."""
    encoded = [reward_ids(tokenizer, messages, response, cfg.max_length) for messages, response in items]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    values: list[float] = [0.0] * len(encoded)
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        ids, mask = right_padded([encoded[i] for i in batch], pad)
        for i, v in zip(batch, forward(ids, mask).float().tolist(), strict=True):
            values[i] = v
    return [checked(v) for v in values]


def load_model(cfg: RewardConfig, pad_id: int):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model, revision=cfg.revision, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
    )
    model.config.pad_token_id = pad_id
    return model.to(device()).eval()  # under a multi-GPU launch, this rank's own GPU


class ClassifierReward:
    """A sequence classifier's reward: `read(output)` picks one score per row from the model's output (the
    logit of its one label by default; ArmoRM's `.score`)."""

    def __init__(self, cfg: RewardConfig, read: Callable[[Any], torch.Tensor] = lambda out: out.logits[:, 0]):
        self.cfg, self.read = cfg, read
        self.tokenizer = load_tokenizer(cfg)
        self.model = load_model(cfg, self.tokenizer.pad_token_id)

    def value_parts(self) -> tuple[torch.nn.Module, torch.nn.Linear, float]:
        """(backbone, head, offset 0): what a PPO value model started from this reward model copies — the
        classifier's base model and its one-output linear head (`score` or `classifier`)."""
        head = getattr(self.model, "score", None) or getattr(self.model, "classifier", None)
        if not isinstance(head, torch.nn.Linear):
            raise ConfigError("[online.ppo.value_init] the reward classifier's head is not one linear layer "
                              "(score or classifier); use value_init: policy.")
        return self.model.base_model, head, 0.0

    def score(self, items: list[tuple[list[Message], str]]) -> list[Reward]:
        dev = self.model.device
        return batched_scores(
            self.cfg, self.tokenizer, items,
            lambda ids, mask: self.read(self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev))),
        )
