import math

import pytest
import torch

from rebelflow.losses import rebel_loss, sequence_logps


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_rebel_loss_by_hand():
    # pair 1: d = (-1 - -2) - (-3 - -3) = 1, target = 2 * (1.0 - 0.5) = 1 -> 0
    # pair 2: d = (-2 - -1) - (-1 - -2) = -2, target = 2 * (0.0 - 1.0) = -2 -> 0, then shifted by 1 below
    loss, m = rebel_loss(t(-1, -2), t(-2, -1), t(-3, -1), t(-3, -2), t(1.0, 0.0), t(0.5, 1.0), eta=2.0)
    assert loss.item() == pytest.approx(0.0)
    loss, m = rebel_loss(t(-1, -1), t(-2, -1), t(-3, -1), t(-3, -2), t(1.0, 0.0), t(0.5, 1.0), eta=2.0)
    # pair 2 now: d = 0 - 1 = -1, target -2 -> (1)^2; mean over 2 pairs = 0.5
    assert loss.item() == pytest.approx(0.5)
    assert m["sign_agreement"] == 1.0 and m["mean_abs_d"] == pytest.approx(1.0)
    assert m["mean_eta_reward_diff"] == pytest.approx(-0.5)


def test_zero_loss_when_d_equals_eta_delta_r_and_pair_order_symmetry():
    g = torch.Generator().manual_seed(0)
    c, co, r, ro = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(4))
    rc, rr = torch.rand(8, generator=g, dtype=torch.float64), torch.rand(8, generator=g, dtype=torch.float64)
    eta = 3.0
    d = (c - co) - (r - ro)
    exact = rebel_loss(c, co, r, ro, rc, rc - d / eta, eta)[0]  # eta * reward difference == d
    assert exact.item() == pytest.approx(0.0, abs=1e-12)
    forward = rebel_loss(c, co, r, ro, rc, rr, eta)[0]
    swapped = rebel_loss(r, ro, c, co, rr, rc, eta)[0]
    assert forward.item() == pytest.approx(swapped.item())


def test_micro_batch_mean_equals_full_batch_mean():
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(12, generator=g, dtype=torch.float64) for _ in range(6)]
    full = rebel_loss(*args, eta=1.5)[0]
    parts = [rebel_loss(*(a[i : i + 4] for a in args), eta=1.5)[0] for i in (0, 4, 8)]
    assert full.item() == pytest.approx(sum(p.item() for p in parts) / 3)


def test_sequence_logps_sums_masked_tokens_with_temperature():
    logits = torch.zeros(1, 3, 2)
    logits[0, 0] = torch.tensor([0.0, math.log(3.0)])  # predicts token 1 with p = 3/4
    logits[0, 1] = torch.tensor([math.log(3.0), 0.0])  # predicts token 1 with p = 1/4
    ids, mask = torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 1]])
    assert sequence_logps(logits, ids, mask).item() == pytest.approx(math.log(3 / 4) + math.log(1 / 4), abs=1e-5)
    assert sequence_logps(logits, ids, torch.tensor([[0, 0, 1]])).item() == pytest.approx(math.log(1 / 4), abs=1e-5)
    # temperature 2 halves the logits: p(1) at t=0 is sqrt(3) / (1 + sqrt(3))
    got = sequence_logps(logits, ids, torch.tensor([[0, 1, 0]]), temperature=2.0).item()
    assert got == pytest.approx(math.log(math.sqrt(3) / (1 + math.sqrt(3))), abs=1e-5)


def test_masked_nll_averages_over_masked_tokens_only():
    logits = torch.zeros(2, 3, 2)
    logits[0, 0] = torch.tensor([0.0, math.log(3.0)])  # p(token 1) = 3/4
    logits[1, 1] = torch.tensor([math.log(3.0), 0.0])  # p(token 1) = 1/4
    ids = torch.tensor([[0, 1, 0], [0, 0, 1]])
    mask = torch.tensor([[0, 1, 0], [0, 0, 1]])
    from rebelflow.losses import masked_nll

    expected = -(math.log(3 / 4) + math.log(1 / 4)) / 2
    assert masked_nll(logits, ids, mask).item() == pytest.approx(expected, abs=1e-5)


def test_bradley_terry_loss_by_hand():
    from rebelflow.losses import bradley_terry_loss

    chosen = torch.tensor([1.0, math.log(3.0)])
    rejected = torch.tensor([1.0, 0.0])
    loss, metrics = bradley_terry_loss(chosen, rejected)
    # -log σ(0) = log 2; -log σ(log 3) = log(1 + 1/3) = log(4/3)
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    assert metrics["accuracy"] == pytest.approx(0.75)  # a tie counts half
    assert metrics["margin"] == pytest.approx(math.log(3.0) / 2)
    swapped, _ = bradley_terry_loss(rejected, chosen)
    assert swapped.item() > loss.item()  # unlike REBEL's loss, the order of the pair matters


def test_dpo_and_ipo_by_hand():
    from rebelflow.losses import preference_loss

    # h = (-1 - -2) - (-3 - -2.5) = 1.5; β h = 0.15
    args = (t(-1.0), t(-2.0), t(-3.0), t(-2.5))
    loss, m = preference_loss(*args, "dpo", beta=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.15)))  # -log σ(0.15) = 0.620957
    assert m["reward_margin"] == pytest.approx(0.15) and m["sign_agreement"] == 1.0 and m["mean_abs_d"] == 1.5
    smoothed, _ = preference_loss(*args, "dpo", beta=0.1, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.9 * math.log(1 + math.exp(-0.15)) + 0.1 * math.log(1 + math.exp(0.15)))
    ipo, _ = preference_loss(*args, "ipo", beta=0.1)
    assert ipo.item() == pytest.approx((1.5 - 5.0) ** 2)  # IPO regresses h onto 1 / (2β) = 5
    with pytest.raises(ValueError, match="unknown objective"):
        preference_loss(*args, "kto", beta=0.1)


def test_dpo_and_ipo_invariants():
    from rebelflow.losses import preference_loss

    g = torch.Generator().manual_seed(2)
    c, cr, r, rr = (torch.randn(16, generator=g, dtype=torch.float64) for _ in range(4))
    # at the reference (h = 0) DPO's loss is log 2 whatever β
    assert preference_loss(c, c, r, r, "dpo", beta=0.7)[0].item() == pytest.approx(math.log(2))
    # only log-ratios matter: shifting a response's logprob under both policies changes nothing
    shift = torch.randn(16, generator=g, dtype=torch.float64)
    for objective in ("dpo", "ipo"):
        base = preference_loss(c, cr, r, rr, objective, beta=0.3)[0].item()
        assert preference_loss(c + shift, cr + shift, r, rr, objective, beta=0.3)[0].item() == pytest.approx(base)
    # DPO pushes chosen up and rejected down; swapping the pair mirrors its loss
    chosen = c.clone().requires_grad_(True)
    rejected = r.clone().requires_grad_(True)
    preference_loss(chosen, cr, rejected, rr, "dpo", beta=0.5)[0].backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    h = (c - cr) - (r - rr)
    swapped = preference_loss(r, rr, c, cr, "dpo", beta=0.5)[0].item()
    assert swapped == pytest.approx(torch.nn.functional.softplus(0.5 * h).mean().item())
    # IPO's minimum is at h = 1 / (2β) for every pair
    target = 1 / (2 * 0.25)
    assert preference_loss(c + (r - rr) + target, c, r, rr, "ipo", beta=0.25)[0].item() == pytest.approx(0.0, abs=1e-12)
