"""PPO in the online loop on CPU (tiny policy, the addition task): the first iteration starts at the reference
with PPO's own numbers, the passes lower the value loss on a fixed batch, a stopped round resumes to the
weights of an uninterrupted one, and a PPO round through the stage saves its value model, which the next
round continues from (also when it started from a reward classifier)."""

from __future__ import annotations

import pytest
import torch

from rebelflow.config.online import OnlineConfig
from rebelflow.ml.online import ppo_targets
from tests.stages.test_online_loop import Shards, make_loop

CFG = OnlineConfig(objective="ppo", iterations=4, prompts_per_iteration=8, samples_per_prompt=1,
                   epochs_per_iteration=2, kl_coef=0.05, penalty_reward_value=-1.0, validate_every=2,
                   checkpoint_every=2, ppo={"minibatch_responses": 4})


def make_ppo_loop(policy_path, cfg=CFG):
    return make_loop(policy_path, cfg)


def test_the_first_iteration_starts_at_the_reference_with_ppos_numbers(tiny_policy, tmp_path):
    cfg = CFG.model_copy(update={"iterations": 1, "epochs_per_iteration": 1,
                                 "ppo": CFG.ppo.model_copy(update={"minibatch_responses": 8})})
    loop = make_ppo_loop(tiny_policy, cfg)
    shards = Shards()
    history = loop.run(tmp_path / "ckpt", shards, say=lambda line: None)
    rows = shards.rows[0]
    assert len(rows) == 8 and history[0]["responses"] == 8 and history[0]["updates"] == 1
    for r in rows:
        tokens = sum(r["mask"])
        assert len(r["token_logp_old"]) == len(r["token_values"]) == len(r["token_rewards"]) == tokens
        assert sum(r["token_logp_old"]) == pytest.approx(r["logp_old"], abs=1e-4)
        assert abs(r["kl"]) < 1e-5  # π_old is the reference before any update
        score = r["score"] if r["has_end"] else -1.0
        assert r["token_rewards"][-1] == pytest.approx(score, abs=1e-5)  # the score at the last token
        assert sum(r["token_rewards"]) == pytest.approx(score - 0.05 * r["kl"], abs=1e-5)  # REBEL's shaped reward
    # the one update: π_θ = π_old, so every ratio is 1 and the policy loss is minus the mean over replies of
    # their mean whitened advantage; the value loss half the mean over replies of their mean squared error
    advantages, returns = ppo_targets([torch.tensor(r["token_rewards"]) for r in rows],
                                      [torch.tensor(r["token_values"]) for r in rows], 1.0, 0.95, True)
    errors = [((g - torch.tensor(r["token_values"])) ** 2).mean().item() for g, r in zip(returns, rows, strict=True)]
    assert history[0]["policy_loss"] == pytest.approx(-sum(a.mean().item() for a in advantages) / 8, abs=1e-5)
    assert history[0]["ratio"] == pytest.approx(1.0, abs=1e-5)
    assert history[0]["value_loss"] == pytest.approx(0.5 * sum(errors) / 8, rel=1e-4)
    assert "val_score" in history[0]


@pytest.mark.parametrize("cliprange_value", [0.2, 100.0])
def test_ppo_passes_lower_the_value_loss_on_a_fixed_batch(tiny_policy, cliprange_value):
    """The value model fits the batch's returns; the value clip (0.2 by default) holds each value within that
    distance of its rollout value, so the loss falls less than unclipped."""
    cfg = CFG.model_copy(update={"iterations": 8, "ppo": CFG.ppo.model_copy(update={"cliprange_value": cliprange_value})})
    loop = make_ppo_loop(tiny_policy, cfg)
    rows = loop.rollout(list(range(8)), 0)
    losses = [loop.regress(rows, 0)["value_loss"] for _ in range(6)]
    assert losses[-1] < (0.9 if cliprange_value < 1 else 0.5) * losses[0], losses


def test_a_stopped_ppo_round_resumes_to_the_weights_of_an_uninterrupted_one(tiny_policy, tmp_path):
    whole = make_ppo_loop(tiny_policy)
    whole.run(tmp_path / "a", Shards(), say=lambda line: None)
    interrupted, shards = make_ppo_loop(tiny_policy), Shards()
    shards.stop_after = 3
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(tmp_path / "b", shards, say=lambda line: None)
    shards.stop_after = None
    resumed = make_ppo_loop(tiny_policy)
    history = resumed.run(tmp_path / "b", shards, say=lambda line: None)
    assert [h["iteration"] for h in history] == [1, 2, 3, 4]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # policy and value model alike


def ppo_config(tmp_path, prompts_file, value_init="policy", **more):
    from tests.conftest import make_config

    return make_config(
        tmp_path, prompts_file, online={"objective": "ppo", "iterations": 6, "prompts_per_iteration": 4, "samples_per_prompt": 1,
                "epochs_per_iteration": 2, "checkpoint_every": 3, "validate_every": 3, "validation_prompts": 4,
                "ppo": {"minibatch_responses": 2, "value_init": value_init}},
        generate={"max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "batch_size": 4}, stop_after="train", **more)


def test_a_ppo_round_saves_its_value_model_and_the_next_round_continues_from_it(tmp_path, prompts_file, tiny_policy):
    from safetensors.torch import load_file

    from rebelflow.ml.ppo import VALUE_FILE
    from rebelflow.planning.campaign import _online_settings
    from rebelflow.stages import online
    from rebelflow.stages.online import _critic
    from tests.stages.helpers import run_round

    cfg = ppo_config(tmp_path, prompts_file)
    store, refs, _ = run_round(cfg, tiny_policy, upto="online")
    ref = refs["online"]
    summary = store.manifest(ref)["summary"]
    assert summary["objective"] == "ppo" and summary["iterations"] == 6
    assert summary["first value loss"] > 0 and "last value loss" in summary
    saved = load_file(store.path(ref) / VALUE_FILE)
    assert any(k.startswith("head.") for k in saved) and any(k.startswith("backbone.") for k in saved)
    # the next round's value model: built anew, then the saved one loaded over it
    settings = _online_settings(cfg, 1)
    critic = _critic(settings, store, ref, None, None)
    for k, v in critic.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    # REBEL's rounds keep their fingerprints: the PPO settings are not hashed for them, η is not for PPO
    rebel = settings.model_copy(update={"online": OnlineConfig(iterations=6)})
    assert "objective" not in online.hashed_settings(rebel)["online"]
    assert "eta" not in online.hashed_settings(settings) and "ppo" in online.hashed_settings(settings)["online"]


def test_a_value_model_from_a_reward_classifier(tiny_policy, tiny_classifier):
    """value_init: reward copies the classifier's backbone and head (the seed starts its critic from the reward
    model); its values at the last token are the classifier's scores before any update."""
    from transformers import AutoTokenizer

    from rebelflow.config.campaign import RewardConfig
    from rebelflow.ml.ppo import critic_from_reward
    from rebelflow.rewards import load_reward

    reward = load_reward(RewardConfig(backend="classifier", model=tiny_classifier))
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    critic = critic_from_reward(reward, tokenizer, "float32")
    ids = torch.tensor([tokenizer("What is 2 + 3? 5").input_ids])
    values = critic(input_ids=ids, attention_mask=torch.ones_like(ids))
    expected = reward.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0]
    assert values[0, -1].item() == pytest.approx(expected.item(), abs=1e-5)
    theirs = {p.data_ptr() for p in reward.model.parameters()}
    assert not any(p.data_ptr() in theirs for p in critic.parameters())  # a copy: training it leaves the reward alone
