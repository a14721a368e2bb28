"""The shipped demo campaign, end to end: it must learn (the README and the closing note quote it)."""

import json
import os
import subprocess
import sys

from rebelflow.config.loading import load_config
from rebelflow.flows.campaign import campaign_flow
from tests.conftest import REPO


def test_the_demo_campaign_learns_round_over_round(tmp_path):
    """`make demo` as a user runs it (the command line, the quiet console, a fresh store): one line per stage
    and the tables, at most 150 lines; it learns; afterwards the plan finds every stage in the store."""
    store = tmp_path / "store"
    cli = [sys.executable, "-m", "rebelflow.cli"]
    run = subprocess.run([*cli, "run", str(REPO / "configs/demo-rebel.yaml"), "--store", str(store)],
                         capture_output=True, text=True, timeout=1800, cwd=tmp_path, env={**os.environ, "COLUMNS": "120"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    shown = (run.stdout + run.stderr).splitlines()
    assert len(shown) <= 150, "\n".join(shown)  # the quiet console; the rest is in the run's log file
    assert "Traceback" not in run.stderr
    summary = json.loads((store / "campaigns/demo-rebel/summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[3]["reward_mean"] > rounds[0]["reward_mean"] + 0.1  # measured: about 0.41 -> 0.60
    assert rounds[3]["win_rate"] > 0.7
    assert all(r["baseline_reward_mean"] == rounds[0]["reward_mean"] for r in rounds)
    # the scripted judge (evaluate.judge) beside the reward: both orders of every held-out prompt's first reply
    assert "judge_win_rate" not in rounds[0] and all(r["judge"].startswith("callable:addition_referee@") for r in rounds[1:])
    assert rounds[3]["judge_win_rate"] > 0.55  # measured: 0.556, 0.594, 0.619 (first replies only: many ties)
    assert not any(r.get("diagnostics") for r in rounds), [r.get("diagnostics") for r in rounds]  # a sane demo
    plan = subprocess.run([*cli, "plan", str(REPO / "configs/demo-rebel.yaml"), "--store", str(store), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    rows = json.loads(plan.stdout)
    assert rows and [(r["round"], r["stage"]) for r in rows if r["status"] != "cached"] == []
    assert sum(line.startswith("round ") for line in shown) == len(rows)  # one progress line per stage


def test_the_refuel_demo_learns_at_every_turn(tmp_path):
    cfg = load_config(REPO / "configs/demo-refuel.yaml", store=str(tmp_path / "store"))
    rounds = campaign_flow(cfg)["summary"]["rounds"]
    assert [len(r["win_rate_by_turn"]) for r in rounds] == [3, 3, 3, 3]
    assert rounds[0]["win_rate_by_turn"] == [0.5, 0.5, 0.5]
    # measured: average win rate 0.58, 0.62, 0.65 after rounds 1-3; every turn above half from round 1
    assert rounds[3]["win_rate"] > 0.6 and rounds[3]["win_rate"] > rounds[1]["win_rate"]
    assert all(w > 0.5 for r in rounds[1:] for w in r["win_rate_by_turn"])
    assert rounds[3]["reward_mean"] > rounds[0]["reward_mean"] + 0.05  # measured: 0.174 -> 0.259
    assert all(len(r["judge_win_rate_by_turn"]) == 3 for r in rounds[1:])  # the judge, turn by turn
    assert rounds[3]["judge_win_rate"] > 0.5


def test_the_online_demo_learns(tmp_path):
    """configs/demo-online.yaml as shipped (3 online rounds of 60 iterations each): it must learn."""
    cfg = load_config(REPO / "configs/demo-online.yaml", store=str(tmp_path / "store"))
    rounds = campaign_flow(cfg)["summary"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    # measured: 0.414 after SFT -> 0.569, 0.568, 0.612 (win rates 0.82, 0.81, 0.88)
    assert rounds[1]["reward_mean"] > rounds[0]["reward_mean"] + 0.1
    assert rounds[3]["reward_mean"] > rounds[0]["reward_mean"] + 0.15 and rounds[3]["win_rate"] > 0.75
    assert rounds[3]["judge_win_rate"] > 0.6


def test_a_ppo_round_on_the_online_demo_learns_and_its_value_loss_falls(tmp_path):
    """demo-online's first round with PPO in place of REBEL (one reply per prompt, a value model from the
    policy's backbone): the policy learns and the value model fits the returns."""
    cfg = load_config(REPO / "configs/demo-online.yaml", ["rounds=1", "online.objective=ppo",
                                                          "online.samples_per_prompt=1"], store=str(tmp_path / "store"))
    summary = campaign_flow(cfg)["summary"]
    rounds = summary["rounds"]
    # measured on a 2-core AMD EPYC: 0.414 after SFT -> 0.558 (win rate 0.79)
    assert rounds[1]["reward_mean"] > rounds[0]["reward_mean"] + 0.1 and rounds[1]["win_rate"] > 0.7
    value_loss = [p["value_loss"] for p in summary["online"]]
    assert len(value_loss) == 60
    first, last = sum(value_loss[:10]) / 10, sum(value_loss[-10:]) / 10
    assert last < 0.85 * first, (first, last)  # measured: 0.59 -> 0.43
