"""Pure tensor math: sequence log-probabilities, REBEL/REFUEL's regression loss and the baselines' losses on
the same pairs (DPO, IPO, RAFT's supervised loss on the best response), PPO's clipped policy and value
losses, the reward model's loss. torch only.

Mask convention: 1 = a trained token (the reply and its end-of-turn token), 0 = everything else.
"""

from __future__ import annotations

import torch


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of every next token under softmax(logits / temperature), in fp32.

    logits: (B, T, V) model outputs, position t predicting token t+1; input_ids: (B, T).
    Returns (B, T - 1): entry t is log p(input_ids[t + 1] | input_ids[<= t]).
    The 1e-7 keeps temperature 0 finite, as in the reference code.
    """
    scaled = logits[:, :-1].float() / (temperature + 1e-7)
    return torch.log_softmax(scaled, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Summed log-probabilities of the masked tokens, under softmax(logits / temperature).

    logits: (B, T, V) model outputs, position t predicting token t+1.
    input_ids: (B, T) the sequence; mask: (B, T), 1 on the tokens to score.
    Returns (B,): sum over t >= 1 with mask[t] = 1 of log p(input_ids[t] | input_ids[<t]).
    """
    logps = token_logps(logits, input_ids, temperature)
    return (logps * mask[:, 1:].to(logps.dtype)).sum(-1)


def rebel_loss(
    chosen_logps: torch.Tensor,
    chosen_old_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_old_logps: torch.Tensor,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    eta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """REBEL/REFUEL regression: mean over pairs of (d - eta * (r_chosen - r_rejected))**2, where
    d = (chosen_logps - chosen_old_logps) - (rejected_logps - rejected_old_logps).

    All arguments are (B,); returns the scalar loss and metrics: loss, sign agreement (fraction of pairs
    whose d has the sign of the reward difference), mean |d| and mean eta * reward difference.
    """
    d = (chosen_logps - chosen_old_logps) - (rejected_logps - rejected_old_logps)
    target = eta * (chosen_rewards - rejected_rewards)
    loss = ((d - target) ** 2).mean()
    metrics = {
        "loss": loss.item(),
        "sign_agreement": (torch.sign(d) == torch.sign(target)).float().mean().item(),
        "mean_abs_d": d.abs().mean().item(),
        "mean_eta_reward_diff": target.mean().item(),
    }
    return loss, metrics


def preference_loss(
    chosen_logps: torch.Tensor,
    chosen_ref_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_ref_logps: torch.Tensor,
    objective: str,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO or IPO on pairs, against a reference policy's logprobs (the round's starting policy, as iterative
    DPO does, or the initial one). With h = (chosen_logps - chosen_ref_logps) - (rejected_logps - rejected_ref_logps):

    dpo: mean of -(1 - ε) log σ(β h) - ε log σ(-β h) (ε = label_smoothing, the conservative DPO of a label
         flipped with probability ε; 0 is plain DPO);
    ipo: mean of (h - 1 / (2β))**2 (IPO's regression of the log-ratio margin onto 1/(2β)).

    All arguments are (B,); returns the scalar loss and metrics: loss, sign agreement (fraction of pairs with
    h > 0, DPO's reward accuracy: chosen is the better response), the mean implicit reward margin β h and mean |h|.
    """
    h = (chosen_logps - chosen_ref_logps) - (rejected_logps - rejected_ref_logps)
    if objective == "dpo":
        loss = (-(1 - label_smoothing) * torch.nn.functional.logsigmoid(beta * h)
                - label_smoothing * torch.nn.functional.logsigmoid(-beta * h)).mean()
    elif objective == "ipo":
        loss = ((h - 1 / (2 * beta)) ** 2).mean()
    else:
        raise ValueError(f"preference_loss: unknown objective {objective!r} (dpo or ipo)")
    metrics = {
        "loss": loss.item(),
        "reward_margin": (beta * h).mean().item(),
        "sign_agreement": (h > 0).float().mean().item(),
        "mean_abs_d": h.abs().mean().item(),
    }
    return loss, metrics


def ppo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_value: float,
    vf_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's loss over the trained tokens: the clipped policy loss plus vf_coef × the clipped value loss.

    All arguments are (B, L), one row per reply, one entry per token position (mask 1 on the reply's tokens,
    0 on padding): the policy's log-probabilities now and at rollout, the advantages, the value model's
    predictions now and at rollout, and the returns. With ratio = exp(logps - old_logps):

    policy loss = mean of max(-A · ratio, -A · clip(ratio, 1 - cliprange, 1 + cliprange));
    value loss  = 0.5 · mean of max((V - R)², (V_clipped - R)²), V_clipped = old V + clip(V - old V, ±cliprange_value);

    each mean over a reply's tokens, then over the replies (rows without tokens left out): every reply counts
    alike, however long, and a batch's loss does not depend on how it is cut into micro-batches. Returns the
    scalar loss and metrics: loss, policy_loss, value_loss, clip_fraction and value_clip_fraction (tokens
    where the clipped term is the larger one), approx_kl (0.5 · mean (logps - old_logps)²) and the mean ratio.
    """
    weights = mask.to(logps.dtype)
    tokens = weights.sum(-1)
    replies = (tokens > 0).to(logps.dtype)

    def mean(x: torch.Tensor) -> torch.Tensor:
        per_reply = (x * weights).sum(-1) / tokens.clamp(min=1.0)
        return (per_reply * replies).sum() / replies.sum().clamp(min=1.0)

    diff = logps - old_logps
    ratio = torch.exp(diff)
    policy_losses = -advantages * ratio
    clipped_losses = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    policy_loss = mean(torch.max(policy_losses, clipped_losses))
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    value_losses, clipped_value_losses = (values - returns) ** 2, (clipped_values - returns) ** 2
    value_loss = 0.5 * mean(torch.max(value_losses, clipped_value_losses))
    loss = policy_loss + vf_coef * value_loss
    metrics = {
        "loss": loss.item(),
        "policy_loss": policy_loss.item(),
        "value_loss": value_loss.item(),
        "clip_fraction": mean((clipped_losses > policy_losses).to(weights.dtype)).item(),
        "value_clip_fraction": mean((clipped_value_losses > value_losses).to(weights.dtype)).item(),
        "approx_kl": mean(0.5 * diff.detach() ** 2).item(),
        "ratio": mean(ratio.detach()).item(),
    }
    return loss, metrics


def masked_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Supervised loss: mean negative log-likelihood over the masked tokens of the whole batch.

    logits: (B, T, V), position t predicting token t+1; input_ids, mask: (B, T), mask 1 = trained token.
    Returns a scalar: sum of -log p over masked tokens t >= 1, divided by their count.
    """
    token_logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    weights = mask[:, 1:].to(token_logps.dtype)
    return -(token_logps * weights).sum() / weights.sum().clamp(min=1.0)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward-model loss: mean over pairs of -log sigmoid(r_chosen - r_rejected).

    chosen_rewards, rejected_rewards: (B,) the model's scalar outputs. Returns the scalar loss and metrics:
    loss, accuracy (r_chosen > r_rejected counts 1, a tie 0.5) and the mean margin r_chosen - r_rejected.
    """
    margin = chosen_rewards.float() - rejected_rewards.float()
    loss = -torch.nn.functional.logsigmoid(margin).mean()
    accuracy = ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()
    return loss, {"loss": loss.item(), "accuracy": accuracy.item(), "margin": margin.mean().item()}
