"""Baselines on REBEL's pipeline: the objective and its settings enter only the train fingerprint (and the
reference's logprobs), so generation, scores and pairs are shared across objectives."""

import pytest

from rebelflow.config.loading import load_config
from rebelflow.planning.campaign import campaign_jobs
from rebelflow.stages import train
from rebelflow.store.refs import hashed_settings
from tests.conftest import REPO


def jobs(tmp_path, **train_settings):
    cfg = load_config(REPO / "configs/demo-rebel.yaml", store=str(tmp_path / "store"))
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=train_settings)})
    return {(j.name, j.round): j for j in campaign_jobs(cfg)}


def settings(job) -> train.Settings:
    return train.Settings(**job.settings)


def test_objectives_share_generation_scores_and_pairs_and_differ_only_in_training(tmp_path):
    rebel, dpo, ipo, raft = (jobs(tmp_path, **s) for s in ({}, {"objective": "dpo"}, {"objective": "ipo"},
                                                            {"objective": "raft"}))
    for name in ("prompts", "generate", "score", "prepare"):
        assert rebel[name, 1].ref == dpo[name, 1].ref == ipo[name, 1].ref == raft[name, 1].ref
    # the demo samples at temperature 1, so DPO's reference logprobs (the round's policy) are REBEL's π_old
    assert rebel["logprobs", 1].ref == dpo["logprobs", 1].ref == ipo["logprobs", 1].ref
    assert len({j["train", 1].ref.id for j in (rebel, dpo, ipo, raft)}) == 4
    # RAFT's supervised loss needs no reference: no logprobs stage, training reads the pairs directly
    assert ("logprobs", 1) not in raft and raft["train", 1].inputs[0] == raft["prepare", 1].ref
    # later rounds start from each objective's own policy
    assert rebel["generate", 2].ref != dpo["generate", 2].ref


def test_only_the_objectives_own_settings_are_fingerprinted(tmp_path):
    rebel = jobs(tmp_path)["train", 1]
    assert not {"objective", "beta", "label_smoothing", "reference"} & set(hashed_settings(settings(rebel)))
    assert jobs(tmp_path, beta=0.5)["train", 1].ref == rebel.ref  # β is DPO's, not REBEL's
    assert jobs(tmp_path, eta=5.0)["train", 1].ref != rebel.ref
    dpo = jobs(tmp_path, objective="dpo")["train", 1]
    assert jobs(tmp_path, objective="dpo", eta=5.0)["train", 1].ref == dpo.ref  # η is REBEL's
    assert jobs(tmp_path, objective="dpo", beta=0.5)["train", 1].ref != dpo.ref
    assert jobs(tmp_path, objective="dpo", label_smoothing=0.1)["train", 1].ref != dpo.ref
    assert hashed_settings(settings(dpo))["temperature"] == 1.0  # DPO's log-ratios at the model's own temperature


def test_dpo_against_the_initial_policy_takes_round_zeros_logprobs(tmp_path):
    per_round = jobs(tmp_path, objective="dpo")
    initial = jobs(tmp_path, objective="dpo", reference="initial")
    start = initial["sft", 0].ref
    assert initial["logprobs", 1].ref == per_round["logprobs", 1].ref  # round 1 starts from the initial policy
    assert initial["logprobs", 2].inputs[1] == start and per_round["logprobs", 2].inputs[1] != start
    assert initial["train", 2].inputs[1] != start  # and it still trains the round's own policy
    # the reference is fingerprinted through the logprobs input: round 1 trains the same model either way
    assert initial["train", 1].ref == per_round["train", 1].ref and initial["train", 2].ref != per_round["train", 2].ref


def test_objective_settings_are_checked_before_any_work():
    from pydantic import ValidationError

    from rebelflow.config.campaign import TrainConfig

    with pytest.raises(ValidationError, match="label_smoothing .* applies to objective: dpo only"):
        TrainConfig(objective="ipo", label_smoothing=0.1)
    with pytest.raises(ValidationError, match="objective"):
        TrainConfig(objective="ppo")
    with pytest.raises(ValidationError, match="reference .initial. is DPO's and IPO's"):
        TrainConfig(objective="raft", reference="initial")
    assert train.Settings(**TrainConfig(objective="raft").model_dump(), temperature=0.7,
                          attn_implementation="eager").unhashed() >= {"eta", "beta", "temperature"}



def online_jobs(tmp_path, *sets: str, preset: str = "demo-online.yaml"):
    cfg = load_config(REPO / "configs" / preset, list(sets), store=str(tmp_path / "store"))
    return {(j.name, j.round): j for j in campaign_jobs(cfg)}


def test_ppo_online_rounds_share_the_baseline_and_fingerprint_only_their_own_settings(tmp_path):
    rebel = online_jobs(tmp_path)
    ppo = online_jobs(tmp_path, "online.objective=ppo", "online.samples_per_prompt=1")
    for name in ("sft", "eval_generate", "eval_score"):  # round 0: the starting policy and its evaluation
        assert rebel[name, 0].ref == ppo[name, 0].ref
    assert rebel["prompts", 1].ref == ppo["prompts", 1].ref
    assert rebel["online", 1].ref != ppo["online", 1].ref
    # η and the pair minibatch are REBEL's: a PPO round does not run again when they change
    same = online_jobs(tmp_path, "online.objective=ppo", "online.samples_per_prompt=1", "train.eta=5",
                       "online.minibatch_pairs=4")
    assert same["online", 1].ref == ppo["online", 1].ref
    other = online_jobs(tmp_path, "online.objective=ppo", "online.samples_per_prompt=1", "online.ppo.vf_coef=0.5")
    assert other["online", 1].ref != ppo["online", 1].ref


def test_ppo_settings_are_checked_before_any_work(tmp_path):
    from pydantic import ValidationError

    from rebelflow.config.errors import ConfigError
    from rebelflow.config.online import OnlineConfig

    with pytest.raises(ValidationError, match="samples_per_prompt is 1: REBEL regresses on pairs"):
        OnlineConfig(iterations=1, samples_per_prompt=1)
    with pytest.raises(ValidationError, match="online.ppo configures objective: ppo"):
        OnlineConfig(iterations=1, ppo={"vf_coef": 0.5})
    with pytest.raises(ValidationError, match=r"minibatch_responses \(64\) is more than an iteration's responses \(32"):
        OnlineConfig(iterations=1, objective="ppo", samples_per_prompt=1, ppo={"minibatch_responses": 64})
    with pytest.raises(ConfigError, match="value_init: reward copies the reward model .* not 'rule'"):
        online_jobs(tmp_path, "online.objective=ppo", "online.ppo.value_init=reward")
    with pytest.raises(ConfigError, match="online.objective: ppo trains single replies"):  # REFUEL's rounds are REBEL's
        online_jobs(tmp_path, "online.objective=ppo", preset="refuel-hh-online.yaml")
