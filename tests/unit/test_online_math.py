"""Online iterations' arithmetic, by hand: cutting at end-of-turn, KL, the shaped reward with penalty and
scale, the adaptive KL coefficient, pairs within prompts, the campaign-long learning rate; and the online
config's checks."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from rebelflow.config.online import OnlineConfig
from rebelflow.ml.online import (
    AdaptiveKL,
    cut_after_end_of_turn,
    learning_rate,
    pairs_within_prompts,
    response_kl,
    shaped_rewards,
)


def test_a_response_is_cut_after_its_first_end_of_turn():
    assert cut_after_end_of_turn([5, 6, 9, 7, 9], [9, 2]) == ([5, 6, 9], True)
    assert cut_after_end_of_turn([5, 6, 2], [9, 2]) == ([5, 6, 2], True)  # the very last token counts
    assert cut_after_end_of_turn([5, 6, 7], [9, 2]) == ([5, 6, 7], False)
    assert cut_after_end_of_turn([], [9]) == ([], False)


def test_shaped_rewards_by_hand():
    scores = torch.tensor([2000.0, -1000.0, 500.0])
    kl = response_kl(torch.tensor([-10.0, -12.0, -5.0]), torch.tensor([-11.0, -12.5, -9.0]))
    assert kl.tolist() == [1.0, 0.5, 4.0]
    has_end = torch.tensor([True, True, False])
    rewards = shaped_rewards(scores, kl, has_end, kl_coef=0.05, penalty=-4.0, scale=1000.0)
    assert rewards.tolist() == pytest.approx([2.0 - 0.05, -1.0 - 0.025, -4.0 - 0.2])
    unpenalised = shaped_rewards(scores, kl, has_end, kl_coef=0.0, penalty=None, scale=1.0)
    assert unpenalised.tolist() == [2000.0, -1000.0, 500.0]


def test_the_adaptive_kl_coefficient_moves_toward_its_target():
    ctl = AdaptiveKL(value=0.05, target=6.0, horizon=10000)
    assert ctl.update(12.0, 1000) == pytest.approx(0.05 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    ctl = AdaptiveKL(value=0.05, target=6.0, horizon=10000)
    assert ctl.update(5.4, 1000) == pytest.approx(0.05 * (1 - 0.1 * 0.1))


def test_pairs_are_formed_within_each_prompt():
    assert pairs_within_prompts(3, 2) == [(0, 1), (2, 3), (4, 5)]
    assert pairs_within_prompts(2, 4) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert pairs_within_prompts(1, 3) == [(0, 1)]


def test_the_learning_rate_over_the_campaign():
    assert [learning_rate(u, 4, 1.0, "linear") for u in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    cosine = [learning_rate(u, 10, 1.0, "cosine", 0.2) for u in range(1, 11)]
    assert cosine[:2] == [0.5, 1.0] and cosine[2] == pytest.approx(1.0) and cosine[-1] < 0.05
    assert all(a >= b for a, b in zip(cosine[2:], cosine[3:], strict=False))


def test_the_online_config_checks_its_minibatches():
    cfg = OnlineConfig(iterations=10, prompts_per_iteration=8, minibatch_pairs=4)
    assert cfg.pairs_per_iteration() == 8 and cfg.kl_coef == 0.05 and cfg.epochs_per_iteration == 4
    with pytest.raises(ValidationError, match=r"minibatch_pairs \(16\) is more than an iteration's pairs \(8"):
        OnlineConfig(iterations=10, prompts_per_iteration=8, minibatch_pairs=16)
