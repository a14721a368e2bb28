"""Every shipped GPU preset rehearsed end to end on CPU through the command line a user types, with the
preset's own stages, engines, launchers and ZeRO configs: the reward-model and online presets in the
deepspeed tier, the campaign presets (vLLM generation) in the vllm tier. Each prints its wall time for the
closing notes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

CLI = [sys.executable, "-m", "rebelflow.cli"]


def rehearse(command: str, preset: str, store: Path, *extra: str) -> tuple[float, str]:
    started = time.time()
    done = subprocess.run([*CLI, command, str(REPO / "configs" / preset), "--rehearse", "--store", str(store), *extra],
                          capture_output=True, text=True, timeout=1800, cwd=store.parent,
                          env={**os.environ, "COLUMNS": "200"})
    seconds = time.time() - started
    print(f"rehearsal of {preset} ({command}): {seconds:.0f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "rehearsal of" in done.stderr and "what differs from the preset" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return seconds, done.stdout


def assert_store_verifies(store: Path) -> None:
    from rebelflow.store.local import Store

    s = Store(store)
    ids = [p.name for p in (store / "artifacts").iterdir()]
    assert ids and all(s.verify(s.find(i)) is None for i in ids)


@pytest.mark.deepspeed
def test_the_reward_model_presets_rehearse_end_to_end(tmp_path):
    """rm-llama3-bt: rm_train under 2-rank ZeRO-3 from a tiny Llama-3 (a pad token added, embeddings resized),
    held-out and RewardBench evaluation; rm-eval-fsfairx: a tiny Llama-3 classifier scored section by section."""
    store = tmp_path / "store"
    _, out = rehearse("rm-train", "rm-llama3-bt.yaml", store)
    assert "rm_train" in out and "overall" in out and "Chat Hard" in out
    _, out = rehearse("rm-eval", "rm-eval-fsfairx.yaml", store)
    assert "overall" in out and "Reasoning" in out
    assert_store_verifies(store)


@pytest.mark.vllm
@pytest.mark.parametrize(("preset", "rounds"), [("rebel-llama3-armorm.yaml", 1), ("refuel-llama3-armorm.yaml", 1)])
def test_the_campaign_presets_rehearse_end_to_end(tmp_path, preset, rounds):
    """vLLM generation (the policy and, for REFUEL, the simulated user as two engines in one process), 2-rank
    ArmoRM scoring with the model's own code, ZeRO-3 logprobs and training, evaluation against round 0;
    afterwards the plan shows every stage cached. One round each (`--set rounds=1`, as a user may), to keep
    CI's vllm tier within its time: vLLM loading a ZeRO-3-trained model, what a second round adds, is
    test_deepspeed's test_the_zero3_model_loads_in_vllm."""
    store = tmp_path / "store"
    extra = ["--set", f"rounds={rounds}"] if rounds == 1 else []
    rehearse("run", preset, store, *extra)
    plan = subprocess.run([*CLI, "plan", str(REPO / "configs" / preset), "--rehearse", "--store", str(store), "--json",
                           *extra], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    rows = json.loads(plan.stdout)
    assert rows and all(r["status"] == "cached" for r in rows)
    assert {r["round"] for r in rows} == set(range(rounds + 1))
    summary = json.loads(next((store / "campaigns").glob("*/summary.json")).read_text())
    assert [r["round"] for r in summary["rounds"]] == list(range(rounds + 1))
    assert_store_verifies(store)


@pytest.mark.deepspeed
@pytest.mark.parametrize(("preset", "rounds"), [("rebel-chat-llama3-online.yaml", 2), ("refuel-hh-online.yaml", 1),
                                                ("rebel-tldr-pythia-online.yaml", 1),
                                                ("rebel-chat-openchat-online.yaml", 1),
                                                ("ppo-tldr-pythia-online.yaml", 2)])
def test_the_online_presets_rehearse_end_to_end(tmp_path, preset, rounds):
    """Online rounds through the accelerate launcher: top-layer training with the frozen-top-layers
    reference (Llama-3, OpenChat's Mistral) or LoRA with adapters off (TL;DR's Pythia, plain-text prompts,
    forced length), a classifier or value-head reward model (TL;DR's, Starling's layouts), checkpoints and
    validations; REFUEL setting two's dialogues from the data's user turns, evaluated per turn. Afterwards
    every stage is cached and the plan notes each online round's curves. The Llama-3 preset rehearses two
    rounds (round 2 continues round 1's schedule from its model), and so does TL;DR's PPO baseline (round 2's
    value model continues round 1's, started from the value-head reward model); the others one, to keep CI's
    deepspeed tier within its time."""
    store = tmp_path / "store"
    extra = ["--set", f"rounds={rounds}"] if rounds == 1 else []
    rehearse("run", preset, store, *extra)
    plan = subprocess.run([*CLI, "plan", str(REPO / "configs" / preset), "--rehearse", "--store", str(store), "--json",
                           *extra], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    rows = json.loads(plan.stdout)
    assert rows and all(r["status"] == "cached" for r in rows)
    online = [r for r in rows if r["stage"] == "online"]
    assert [r["round"] for r in online] == list(range(1, rounds + 1)) and all(" val " in r["note"] for r in online)
    summary = json.loads(next((store / "campaigns").glob("*/summary.json")).read_text())
    assert [r["round"] for r in summary["rounds"]] == list(range(rounds + 1)) and len(summary["online"]) == 4 * rounds
    if "refuel" in preset:
        assert all(len(r["win_rate_by_turn"]) == 5 for r in summary["rounds"])
    if preset.startswith("ppo"):  # each round saved its value model; round 2 started from round 1's
        logs = "".join(p.read_text() for p in (store / "logs").glob("online-*.log"))
        assert len(list((store / "artifacts").glob("online-*/value/model.safetensors"))) == rounds
        assert "the value model continues from the previous round's" in logs
    assert_store_verifies(store)


@pytest.mark.deepspeed
def test_the_ultrainteract_online_preset_validates_and_plans_its_rehearsal(tmp_path):
    """refuel-ultrainteract-online runs the machinery refuel-hh-online rehearses in full (setting two's
    dialogues; only its data column, kl 0 and penalty differ): here its rehearsal is built and planned."""
    plan = subprocess.run([*CLI, "plan", str(REPO / "configs" / "refuel-ultrainteract-online.yaml"), "--rehearse",
                           "--store", str(tmp_path / "store"), "--json"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    rows = json.loads(plan.stdout)
    assert [r["stage"] for r in rows if r["round"] == 1] == ["prompts", "online", "eval_generate", "eval_score", "evaluate"]
    assert all(r["status"] == "pending" and "iterations" in r["note"] for r in rows if r["stage"] == "online")
