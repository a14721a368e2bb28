"""The arithmetic of an online iteration (REFERENCE: "REBEL, online"), pure and small so each piece is
checked by hand: cutting a response after its first end-of-turn, the KL of a response against the
reference, the shaped reward with the no-end-of-turn penalty, the adaptive KL coefficient, pairs within a
prompt, and the learning rate over a campaign's updates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def cut_after_end_of_turn(token_ids: list[int], end_ids: list[int]) -> tuple[list[int], bool]:
    """The response up to and including its first end-of-turn token, and whether it has one (also when
    that token is the very last generated: a padding-based test misses that case)."""
    ends = set(end_ids)
    for i, token in enumerate(token_ids):
        if token in ends:
            return token_ids[: i + 1], True
    return list(token_ids), False


def response_kl(old_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """KL of each response: Σ over its tokens of (log π_old − log π_ref), from summed log-probabilities."""
    return old_logps - ref_logps


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, has_end: torch.Tensor, kl_coef: float,
                   penalty: float | None, scale: float) -> torch.Tensor:
    """reward = score / scale − kl_coef · KL, where a response without end-of-turn scores `penalty`
    instead (when a penalty is set)."""
    score = scores / scale
    if penalty is not None:
        score = torch.where(has_end, score, torch.full_like(score, penalty))
    return score - kl_coef * kl


@dataclass
class AdaptiveKL:
    """A proportional controller of kl_coef: the error (mean KL / target − 1, clipped to ±0.2) moves the
    coefficient by a factor of 1 + error · responses / horizon."""

    value: float
    target: float
    horizon: int

    def update(self, mean_kl: float, responses: int) -> float:
        error = max(-0.2, min(0.2, mean_kl / self.target - 1))
        self.value *= 1 + error * responses / self.horizon
        return self.value


def pairs_within_prompts(prompts: int, samples: int) -> list[tuple[int, int]]:
    """Pairs of response indices (row-major: prompt p's samples are p·samples … p·samples + samples − 1):
    (first, second), (third, fourth), … of each prompt."""
    return [(p * samples + j, p * samples + j + 1) for p in range(prompts) for j in range(0, samples - 1, 2)]


def learning_rate(update: int, total: int, lr: float, schedule: str, warmup_ratio: float = 0.0) -> float:
    """The rate of 1-based `update` of `total` over the whole campaign: linear anneal lr·(1 − (u − 1)/U) as
    the reference code does, or linear warmup then cosine decay to 0."""
    if schedule == "linear":
        return lr * (1 - (update - 1) / total)
    warmup = int(total * warmup_ratio)
    if update <= warmup:
        return lr * update / warmup
    progress = (update - 1 - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))
