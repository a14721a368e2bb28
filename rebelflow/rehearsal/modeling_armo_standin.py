"""A tiny stand-in for ArmoRM's own model code, copied into a rehearsal's reward-model folder and loaded
from there with trust_remote_code, as ArmoRM's is. The shape of its answer is ArmoRM's: a Llama backbone
reads the conversation; at the last token a regression layer gives one reward per objective, a gating
layer mixes them, and the output's `score` is the mixed reward, one per row. Self-contained: the folder
must load without rebelflow installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.utils import ModelOutput


@dataclass
class ArmoStandInOutput(ModelOutput):
    score: torch.FloatTensor | None = None  # (rows, 1): the reward
    rewards: torch.FloatTensor | None = None  # (rows, objectives)
    gating_output: torch.FloatTensor | None = None  # (rows, objectives), rows sum to 1
    logits: torch.FloatTensor | None = None  # same as score, for code that reads logits


class ArmoStandIn(LlamaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.regression_layer = torch.nn.Linear(config.hidden_size, config.num_objectives, bias=False)
        self.gating = torch.nn.Sequential(
            torch.nn.Linear(config.hidden_size, config.gating_hidden_dim),
            torch.nn.ReLU(),
            torch.nn.Linear(config.gating_hidden_dim, config.num_objectives),
        )
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if attention_mask is None:
            last = torch.full((hidden.shape[0],), hidden.shape[1] - 1, device=hidden.device)
        else:
            last = attention_mask.long().sum(-1) - 1  # right padding: the last real token
        at_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        rewards = self.regression_layer(at_last)
        weights = torch.softmax(self.gating(at_last), dim=-1)
        score = (rewards * weights).sum(-1, keepdim=True)
        return ArmoStandInOutput(score=score, rewards=rewards, gating_output=weights, logits=score)
