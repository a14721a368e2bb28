"""PPO's arithmetic by hand (REFERENCE: "PPO baseline (TL;DR)"): per-token rewards, whitening, GAE, the
targets of a batch, the clipped policy and value losses, and the per-token layout the loop reads them in."""

from __future__ import annotations

import math

import pytest
import torch

from rebelflow.losses import ppo_loss
from rebelflow.ml.batching import laid_out, per_token
from rebelflow.ml.online import gae, ppo_targets, shaped_rewards, token_rewards, whiten


def test_token_rewards_carry_the_kl_per_token_and_the_score_at_the_end():
    rewards = token_rewards(torch.tensor([0.1, -0.2, 0.3]), 2.0, 0.5)
    assert rewards.tolist() == pytest.approx([-0.05, 0.1, 1.85])
    # they sum to REBEL's shaped reward of the same reply: score − kl_coef · KL
    shaped = shaped_rewards(torch.tensor([2.0]), torch.tensor([0.2]), torch.tensor([True]), 0.5, -1.0, 1.0)
    assert rewards.sum().item() == pytest.approx(shaped.item())


def test_whitening_by_hand():
    # mean 2, population variance 2/3
    assert whiten(torch.tensor([1.0, 2.0, 3.0])).tolist() == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)], rel=1e-6)
    assert whiten(torch.tensor([1.0, 2.0, 3.0]), shift_mean=False).tolist() == pytest.approx(
        [2 - math.sqrt(1.5), 2.0, 2 + math.sqrt(1.5)], rel=1e-6)


def test_gae_by_hand():
    rewards, values = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.5, 0.6, 0.7])
    # δ = (0 + 0.6 − 0.5, 0 + 0.7 − 0.6, 1 + 0 − 0.7) = (0.1, 0.1, 0.3); A_t = δ_t + 0.95 · A_{t+1}
    assert gae(rewards, values, 1.0, 0.95).tolist() == pytest.approx([0.1 + 0.95 * 0.385, 0.385, 0.3])
    # λ = 1, γ = 1: the return to go minus the value
    assert gae(rewards, values, 1.0, 1.0).tolist() == pytest.approx([0.5, 0.4, 0.3])
    # λ = 0: one-step temporal differences, discounted by γ
    assert gae(rewards, values, 0.5, 0.0).tolist() == pytest.approx([0.3 - 0.5, 0.35 - 0.6, 1 - 0.7])


def test_the_targets_of_a_batch():
    rewards = [torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0, -1.0])]
    values = [torch.tensor([0.2, 0.4]), torch.tensor([0.1, 0.0, 0.3])]
    advantages, returns = ppo_targets(rewards, values, 1.0, 0.95, whiten_rewards=False)
    raw = [gae(r, v, 1.0, 0.95) for r, v in zip(rewards, values, strict=True)]
    # returns come from the advantages before they are whitened
    for g, a, v in zip(returns, raw, values, strict=True):
        assert g.tolist() == pytest.approx((a + v).tolist())
    flat = torch.cat(advantages)
    assert [len(a) for a in advantages] == [2, 3]
    assert flat.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert flat.var(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    assert flat.tolist() == pytest.approx(whiten(torch.cat(raw)).tolist())
    # whitened rewards: the same rewards scaled by 1 / their standard deviation around their mean
    scaled, _ = ppo_targets(rewards, values, 1.0, 0.95, whiten_rewards=True)
    expected = [gae(r, v, 1.0, 0.95) for r, v in zip(
        torch.split(whiten(torch.cat(rewards), shift_mean=False), [2, 3]), values, strict=True)]
    assert torch.cat(scaled).tolist() == pytest.approx(whiten(torch.cat(expected)).tolist())


def one(x: float) -> torch.Tensor:
    return torch.tensor([[x, 123.0]])  # a second, padded position that the mask leaves out


@pytest.mark.parametrize(("ratio", "advantage", "expected", "clipped"), [
    (1.5, 1.0, -1.2, 1.0),   # a good token pushed past 1 + ε: the clipped term holds it, no gradient
    (1.5, -1.0, 1.5, 0.0),   # a bad token made likelier: the unclipped (larger) loss counts
    (0.5, 1.0, -0.5, 0.0),   # a good token made less likely: unclipped
    (0.5, -1.0, 0.8, 1.0),   # a bad token pushed below 1 − ε: clipped
])
def test_the_clipped_policy_loss_by_hand(ratio, advantage, expected, clipped):
    logps = one(math.log(ratio)).requires_grad_(True)
    mask = torch.tensor([[1, 0]])
    loss, metrics = ppo_loss(logps, one(0.0), one(advantage), one(0.0), one(0.0), one(0.0), mask, 0.2, 0.2, 0.0)
    assert metrics["policy_loss"] == pytest.approx(expected)
    assert metrics["clip_fraction"] == clipped
    assert metrics["approx_kl"] == pytest.approx(0.5 * math.log(ratio) ** 2)
    loss.backward()
    assert logps.grad[0, 1] == 0  # padding never trains
    assert (logps.grad[0, 0] == 0) == bool(clipped)


def test_the_clipped_value_loss_by_hand():
    mask = torch.tensor([[1, 0]])
    values = one(1.0).requires_grad_(True)
    # V moved from 0.5 to 1.0 towards the return 2: clipped to 0.7, whose error (1.69) is the larger one
    loss, metrics = ppo_loss(one(0.0), one(0.0), one(0.0), values, one(0.5), one(2.0), mask, 0.2, 0.2, 0.1)
    assert metrics["value_loss"] == pytest.approx(0.5 * 1.69)
    assert metrics["value_clip_fraction"] == 1.0
    assert metrics["loss"] == pytest.approx(0.1 * 0.5 * 1.69)
    loss.backward()
    assert values.grad[0, 0] == 0  # the clipped branch holds the value still
    # within the clip range the plain error counts and trains the value
    values = one(0.6).requires_grad_(True)
    loss, metrics = ppo_loss(one(0.0), one(0.0), one(0.0), values, one(0.5), one(2.0), mask, 0.2, 0.2, 0.1)
    assert metrics["value_loss"] == pytest.approx(0.5 * 1.4 ** 2)
    loss.backward()
    assert values.grad[0, 0].item() == pytest.approx(0.1 * (0.6 - 2.0))


def test_every_reply_counts_alike_so_micro_batches_do_not_change_the_loss():
    """Replies of 1 and 4 tokens: the loss of both together is the mean of their losses apart, as the loop's
    weighting by replies assumes (a mean over all tokens would let the long reply count four times)."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    args = [torch.randn(2, 4) * 0.1 for _ in range(6)]

    def loss(rows):
        return ppo_loss(*(a[rows] for a in args), mask[rows], 0.2, 0.2, 0.1)[0].item()

    assert loss([0, 1]) == pytest.approx((loss([0]) + loss([1])) / 2, rel=1e-6)


def test_per_token_values_round_trip_through_the_padded_layout():
    masks = [[0, 0, 1, 1], [0, 1, 1, 1, 1, 0]]
    padded = torch.arange(10, dtype=torch.float32).reshape(2, 5)  # (B, T − 1) of a batch padded to T = 6
    rows = per_token(padded, masks)
    assert [r.tolist() for r in rows] == [[1.0, 2.0], [5.0, 6.0, 7.0, 8.0]]  # entry t is token t + 1's
    back = laid_out([r.tolist() for r in rows], masks, padded)
    assert back.tolist() == [[0, 1, 2, 0, 0], [5, 6, 7, 8, 0]]


class Vocabulary:
    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return self.vocab


def test_a_value_model_from_a_reward_model_needs_the_policys_vocabulary():
    from rebelflow.config.errors import ConfigError
    from rebelflow.ml.ppo import check_vocabulary

    check_vocabulary(Vocabulary({"a": 0, "b": 1, "[PAD]": 2}), Vocabulary({"a": 0, "b": 1}), 8)  # an added pad is fine
    with pytest.raises(ConfigError, match="token 'a' is 0 for the policy and 1 for the reward model.*value_init: policy"):
        check_vocabulary(Vocabulary({"a": 0, "b": 1}), Vocabulary({"a": 1, "b": 0}), 8)
    with pytest.raises(ConfigError, match="the policy's id 5 has no embedding among the reward model's 5"):
        check_vocabulary(Vocabulary({"a": 0, "b": 5}), Vocabulary({"a": 0}), 5)
