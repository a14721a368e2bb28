"""AlpacaEval 2.0's length-controlled win rate (REFERENCE: "Evaluation as the papers report it").

A judge prefers longer answers; the LC win rate asks what it would have said at equal length. Per
instruction i with p_i, the judge's probability that the policy's answer beats the baseline's, fit a
logistic GLM without intercept on

    tanh(Δ_i / std(Δ))   (Δ_i = baseline length − policy length, in characters)
    difficulty_i         (an instruction-difficulty value, when one is known)
    1                    (the model term)

with soft labels p_i (each instruction counted as a win with weight p_i and a loss with weight 1 − p_i),
L1-penalised, the penalty chosen by 5-fold cross-validation over instructions (AlpacaEval's
LogisticRegressionCV: liblinear, Cs = 10 values from 1e-4 to 1e4, the soft log loss), then refit on all.
The LC win rate is the mean predicted p_i with the length term at zero: mean σ(w_model + w_diff · difficulty_i).

AlpacaEval takes the difficulty of its 805 instructions from its leaderboard; without it (any other
instruction set) the GLM has the length and model terms only (AlpacaEval's `length_controlled_minimal`).
"""

from __future__ import annotations

import numpy as np

CS = np.logspace(-4, 4, 10)  # LogisticRegressionCV's default grid


def lc_win_rate(preferences: list[float], policy_lengths: list[int], baseline_lengths: list[int],
                difficulty: list[float] | None = None, folds: int = 5) -> dict[str, float]:
    """The raw win rate (mean preference) and the length-controlled one, with the GLM's weights."""
    p = np.asarray(preferences, dtype=float)
    if len(p) < 2 * folds:
        raise ValueError(f"the length-controlled win rate needs at least {2 * folds} judged instructions, got {len(p)}")
    delta = np.asarray(baseline_lengths, dtype=float) - np.asarray(policy_lengths, dtype=float)
    spread = delta.std(ddof=1)
    length = np.tanh(delta / spread) if spread > 0 else np.zeros_like(delta)
    columns = [length, *([np.asarray(difficulty, dtype=float)] if difficulty is not None else []), np.ones_like(p)]
    x = np.stack(columns, axis=1)
    best = max(CS, key=lambda c: _cv_score(x, p, c, folds))
    w = _fit(x, p, best)
    at_equal_length = x.copy()
    at_equal_length[:, 0] = 0.0
    lc = float(np.mean(_sigmoid(at_equal_length @ w)))
    out = {"win_rate": float(p.mean()), "lc_win_rate": lc, "length_weight": float(w[0]), "model_weight": float(w[-1]),
           "C": float(best)}
    if difficulty is not None:
        out["difficulty_weight"] = float(w[1])
    return out


def _fit(x: np.ndarray, p: np.ndarray, c: float) -> np.ndarray:
    """L1 logistic regression on soft labels: every row once as a win (weight p) and once as a loss (1 − p)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", fit_intercept=False, random_state=123)  # L1
    model.fit(np.concatenate([x, x]), np.concatenate([np.ones(len(p)), np.zeros(len(p))]),
              sample_weight=np.concatenate([p, 1 - p]))
    return model.coef_[0]


def _cv_score(x: np.ndarray, p: np.ndarray, c: float, folds: int) -> float:
    """Minus the mean soft log loss on held-out instructions over `folds` folds (each instruction is one group)."""
    from sklearn.model_selection import GroupKFold

    losses = []
    for train, test in GroupKFold(n_splits=folds).split(x, groups=np.arange(len(p))):
        q = np.clip(_sigmoid(x[test] @ _fit(x[train], p[train], c)), 1e-15, 1 - 1e-15)
        losses.append(-np.mean(p[test] * np.log(q) + (1 - p[test]) * np.log(1 - q)))
    return -float(np.mean(losses))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -z))
