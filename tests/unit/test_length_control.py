"""AlpacaEval 2.0's length-controlled win rate on hand-worked cases: preferences made exactly by the GLM's own
form, p_i = σ(a + b·tanh(Δ_i/std Δ) [+ c·difficulty_i]), so the fit recovers a, b (c) and the LC win rate is
σ(a) (the mean of σ(a + c·difficulty_i)) — what the judge would prefer at equal length."""

import math

import numpy as np
import pytest

from rebelflow.judges.length_control import lc_win_rate


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def lengths(n=60, seed=0, skew=0):
    rng = np.random.default_rng(seed)
    policy = rng.integers(100, 900, n) + skew
    baseline = rng.integers(100, 900, n)
    return policy.tolist(), baseline.tolist()


def made_by_the_glm(policy, baseline, a, b, c=0.0, difficulty=None):
    delta = np.asarray(baseline, float) - np.asarray(policy, float)
    t = np.tanh(delta / delta.std(ddof=1))
    d = np.zeros(len(t)) if difficulty is None else np.asarray(difficulty)
    return [sigmoid(a + b * ti + c * di) for ti, di in zip(t, d, strict=True)]


def test_the_length_term_is_taken_out():
    policy, baseline = lengths()
    p = made_by_the_glm(policy, baseline, a=0.4, b=-1.2)
    got = lc_win_rate(p, policy, baseline)
    assert got["lc_win_rate"] == pytest.approx(sigmoid(0.4), abs=2e-3)  # 0.5987
    assert got["length_weight"] == pytest.approx(-1.2, abs=0.02) and got["model_weight"] == pytest.approx(0.4, abs=0.02)
    assert got["win_rate"] == pytest.approx(sum(p) / len(p))


def test_with_instruction_difficulty():
    policy, baseline = lengths(seed=1)
    difficulty = np.linspace(-1.5, 1.5, len(policy)).tolist()
    p = made_by_the_glm(policy, baseline, a=0.4, b=-1.2, c=0.8, difficulty=difficulty)
    got = lc_win_rate(p, policy, baseline, difficulty)
    expected = np.mean([sigmoid(0.4 + 0.8 * d) for d in difficulty])
    assert got["lc_win_rate"] == pytest.approx(expected, abs=2e-3) and got["difficulty_weight"] == pytest.approx(0.8, abs=0.03)


def test_a_judge_that_only_likes_length_gives_half_at_equal_length():
    policy, baseline = lengths(seed=2, skew=300)  # the policy's answers are mostly longer
    p = made_by_the_glm(policy, baseline, a=0.0, b=-2.0)
    got = lc_win_rate(p, policy, baseline)
    assert got["win_rate"] > 0.65  # raw: the longer answers win
    assert got["lc_win_rate"] == pytest.approx(0.5, abs=3e-3)


def test_a_judge_blind_to_length_keeps_the_raw_win_rate():
    policy, baseline = lengths(seed=3)
    got = lc_win_rate([0.7] * len(policy), policy, baseline)
    assert got["lc_win_rate"] == pytest.approx(0.7, abs=3e-3) and abs(got["length_weight"]) < 0.05


def test_too_few_instructions_is_an_error():
    with pytest.raises(ValueError, match="at least 10 judged instructions"):
        lc_win_rate([0.5] * 4, [1, 2, 3, 4], [4, 3, 2, 1])
