"""The baselines' training on REBEL's pairs: DPO's implicit reward margin grows, RAFT learns only the best
responses, and a round of each runs through the train stage on the shared pairs."""

import pytest
import torch

from rebelflow.ml.batching import batch_logps, pair_loss
from rebelflow.ml.models import load_causal_lm
from tests.conftest import make_config
from tests.stages.helpers import run_round


def fixed_pairs(model, n: int = 4, seed: int = 0) -> list[dict]:
    """n pairs of random token sequences: a 6-token prompt then 5 reply tokens (masked), with π_old = the model."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        prompt = torch.randint(5, 500, (6,), generator=g).tolist()
        chosen, rejected = (prompt + torch.randint(5, 500, (5,), generator=g).tolist() for _ in range(2))
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected, "chosen_mask": [0] * 6 + [1] * 5,
                     "rejected_mask": [0] * 6 + [1] * 5, "chosen_reward": 1.0, "rejected_reward": 0.0})
    with torch.no_grad():
        for side in ("chosen", "rejected"):
            logps = batch_logps(model, [r[f"{side}_ids"] for r in rows], [r[f"{side}_mask"] for r in rows], 1.0, 0)
            for r, lp in zip(rows, logps.tolist(), strict=True):
                r[f"{side}_logp_old"] = lp
    return rows


def test_dpos_implicit_reward_margin_grows_on_a_fixed_batch(tiny_policy):
    torch.manual_seed(0)
    model = load_causal_lm(tiny_policy, "float32", "eager")
    rows = fixed_pairs(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    margins = []
    for _ in range(12):
        loss, metrics = pair_loss(model, rows, eta=1.0, temperature=1.0, pad=0, objective="dpo", beta=0.1)
        margins.append(metrics["reward_margin"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(margins[0]) < 1e-4  # the policy starts at its reference
    assert margins[-1] > margins[len(margins) // 2] > margins[1] > 0


def test_raft_learns_only_the_best_response(tiny_policy):
    model = load_causal_lm(tiny_policy, "float32", "eager")
    rows = fixed_pairs(model)
    loss, metrics = pair_loss(model, rows, eta=1.0, temperature=1.0, pad=0, objective="raft")
    other = [{**r, "rejected_ids": r["rejected_ids"][:3], "rejected_logp_old": 99.0, "rejected_reward": 5.0} for r in rows]
    assert pair_loss(model, other, eta=1.0, temperature=1.0, pad=0, objective="raft")[0].item() == loss.item()
    expected = -batch_logps(model, [r["chosen_ids"] for r in rows], [r["chosen_mask"] for r in rows], 1.0, 0).sum() / 20
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)  # mean NLL over the 4 × 5 chosen reply tokens
    assert metrics["tokens"] == sum(len(r["chosen_ids"]) for r in rows)  # one pass, over the chosen only


def test_a_dpo_and_a_raft_round_train_on_the_shared_pairs(tmp_path, prompts_file, tiny_policy):
    (tmp_path / "rules.py").write_text("def length(messages, response):\n    return len(response) / 10\n")
    reward = {"function": f"{tmp_path / 'rules.py'}:length"}
    cfg = make_config(tmp_path, prompts_file, reward=reward, train={"epochs": 4, "lr": 3e-3, "objective": "dpo"})
    store, dpo, _ = run_round(cfg, tiny_policy, upto="train")
    summary = store.manifest(dpo["train"])["summary"]
    assert summary["objective"] == "dpo" and summary["last loss"] < summary["first loss"]
    assert summary["curve"][-1]["reward_margin"] > 0 and summary["last val_sign_agreement"] is not None
    raft_cfg = make_config(tmp_path, prompts_file, reward=reward, train={"epochs": 4, "lr": 3e-3, "objective": "raft"})
    _, raft, _ = run_round(raft_cfg, tiny_policy, upto="train")
    assert "logprobs" not in raft and raft["prepare"] == dpo["prepare"]  # the same pairs, no reference pass
    summary = store.manifest(raft["train"])["summary"]
    assert summary["objective"] == "raft" and summary["last loss"] < summary["first loss"]
    assert summary["last val_sign_agreement"] is None and summary["last val_loss"] is not None
