"""The shipped demo campaign, end to end: it must learn (the README and the closing note quote it)."""

import json
from pathlib import Path

from rebelflow.config import load_config
from rebelflow.flows.campaign import campaign_flow
from tests.conftest import REPO


def test_the_demo_campaign_learns_round_over_round(tmp_path):
    cfg = load_config(REPO / "configs/demo-rebel.yaml", store=str(tmp_path / "store"))
    result = campaign_flow(cfg)
    summary = json.loads((Path(cfg.store.root) / "campaigns/demo-rebel/summary.json").read_text())
    assert summary == result["summary"]
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[3]["reward_mean"] > rounds[0]["reward_mean"] + 0.1  # measured: about 0.41 -> 0.60
    assert rounds[3]["win_rate"] > 0.7
    assert all(r["baseline_reward_mean"] == rounds[0]["reward_mean"] for r in rounds)
