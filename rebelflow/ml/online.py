"""The arithmetic of an online iteration (REFERENCE: "REBEL, online"), pure and small so each piece is
checked by hand: cutting a response after its first end-of-turn, the KL of a response against the
reference, the shaped reward with the no-end-of-turn penalty, the adaptive KL coefficient, pairs within a
prompt, the learning rate over a campaign's updates, and PPO's per-token rewards, whitening and
generalised advantage estimation (REFERENCE: "PPO baseline (TL;DR)")."""

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


def token_rewards(token_kl: torch.Tensor, score: float, kl_coef: float) -> torch.Tensor:
    """PPO's reward of each token of a reply: −kl_coef · (log π_old − log π_ref) of that token, and the
    reply's score (penalised and scaled as `shaped_rewards` does) added at its last token, the end-of-turn
    (or where a reply without one was cut). They sum to the reply's shaped reward."""
    rewards = -kl_coef * token_kl
    rewards[-1] += score
    return rewards


def whiten(values: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values − mean) / std over all entries (the population variance, + 1e-8); shift_mean=False adds the
    mean back, so only the scale changes (how the reference whitens rewards)."""
    mean, var = values.mean(), values.var(unbiased=False)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates of one reply's tokens: A_t = δ_t + γλ A_{t+1}, δ_t = r_t + γ V_{t+1} − V_t,
    with V after the last token 0 (the episode ends there)."""
    advantages = torch.zeros_like(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        following = values[t + 1] if t + 1 < len(rewards) else 0.0
        running = rewards[t] + gamma * following - values[t] + gamma * lam * running
        advantages[t] = running
    return advantages


def ppo_targets(rewards: list[torch.Tensor], values: list[torch.Tensor], gamma: float, lam: float,
                whiten_rewards: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Advantages and returns of an iteration's replies (one tensor per reply, over its tokens): rewards
    whitened over all the batch's tokens (scale only) when asked, GAE per reply, returns = advantages +
    values, then the advantages whitened over all tokens."""
    lengths = [len(r) for r in rewards]
    if whiten_rewards:
        rewards = list(torch.split(whiten(torch.cat(rewards), shift_mean=False), lengths))
    advantages = [gae(r, v, gamma, lam) for r, v in zip(rewards, values, strict=True)]
    returns = [a + v for a, v in zip(advantages, values, strict=True)]
    return list(torch.split(whiten(torch.cat(advantages)), lengths)), returns
