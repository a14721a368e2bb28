"""Classifier rewards: any `AutoModelForSequenceClassification` with one label; the reward is its logit.

Inputs are the chat-templated conversation with the response as the last assistant turn, truncated
from the left (the end of a conversation decides its score), sorted by length and batched with
attention masks. The pad token must be a real token, not EOS: the model finds each sequence's last
token by looking for the pad id, and an EOS pad makes it read the wrong position.
"""

from __future__ import annotations

import torch

from rebelflow.chat import encode, render
from rebelflow.config import RewardConfig
from rebelflow.errors import ConfigError
from rebelflow.rewards import Message, Reward, checked

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ClassifierReward:
    def __init__(self, cfg: RewardConfig):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, revision=cfg.revision)
        if cfg.pad_token is not None:
            if cfg.pad_token not in self.tokenizer.get_vocab():
                raise ConfigError(f"[reward.pad_token] {cfg.pad_token!r} is not in the vocabulary of {cfg.model}.")
            self.tokenizer.pad_token = cfg.pad_token
        pad = self.tokenizer.pad_token_id
        if pad is None or pad == self.tokenizer.eos_token_id:
            raise ConfigError(
                f"[reward.model] the tokenizer of {cfg.model} has {'no pad token' if pad is None else 'EOS as pad'}; "
                "with it the classifier reads the wrong position and scores responses alike. Set "
                "reward.pad_token to an unused vocabulary token (e.g. a reserved special token)."
            )
        self.model = AutoModelForSequenceClassification.from_pretrained(
            cfg.model, revision=cfg.revision, dtype=_DTYPES[cfg.dtype]
        )
        self.model.config.pad_token_id = pad
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()

    @torch.inference_mode()
    def score(self, items: list[tuple[list[Message], str]]) -> list[Reward]:
        encoded = []
        for messages, response in items:
            text = render(self.tokenizer, [*messages, {"role": "assistant", "content": response}], False)
            encoded.append(encode(self.tokenizer, text)[-self.cfg.max_length :])
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        values: list[float] = [0.0] * len(encoded)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.cfg.batch_size):
            batch = order[start : start + self.cfg.batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.tensor([encoded[i] + [pad] * (width - len(encoded[i])) for i in batch])
            mask = torch.tensor([[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in batch])
            logits = self.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device)).logits
            for i, v in zip(batch, logits[:, 0].float().tolist(), strict=True):
                values[i] = v
        return [checked(v) for v in values]
