"""The resident online loop on CPU (transformers sampling inside the trainer): the first iteration's KL
is 0 (π_old is the reference), one update's loss is `losses.rebel_loss` on the iteration's own numbers, and
a round stopped after its checkpoint resumes to the weights of an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from rebelflow.config.online import OnlineConfig
from rebelflow.engines.base import SamplingParams
from rebelflow.engines.hf import HFEngine
from rebelflow.ml.distributed import make_accelerator
from rebelflow.ml.online_loop import OnlineLoop, Optimization, SingleTurn, updates_per_iteration
from rebelflow.ml.reference import make_reference
from rebelflow.rewards.examples import addition

PROMPTS = [{"prompt_id": f"{a}+{b}", "messages": [{"role": "user", "content": f"What is {a} + {b}?"}]}
           for a in range(4) for b in range(4)]


class Shards:
    def __init__(self):
        self.rows, self.stop_after = {}, None

    def has(self, i):
        return i in self.rows

    def read(self, i):
        return self.rows[i]

    def write(self, i, rows):
        if self.stop_after is not None and i >= self.stop_after:
            raise KeyboardInterrupt("stopped")  # as a kill would, after the checkpoint of iteration 2
        self.rows[i] = json.loads(json.dumps(rows))


def make_loop(policy_path, cfg, reward=addition, max_invalid_fraction=1.0, micro=None, dtype=torch.float32, lr=1e-3):
    """The loop of `cfg`'s objective on the tiny policy, sampling with transformers; PPO's value model is the
    policy checkpoint's backbone with a new head, trained whole."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rebelflow.ml.ppo import PolicyAndValue, PPOLoop, critic_from_policy, set_critic_trainable

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype)
    engine = HFEngine.resident(model, tokenizer)

    def sample(conversations, n, seed, temperature):
        params = SamplingParams(n, temperature, 1.0, 4, seed)
        return [[c.token_ids for c in row] for row in engine.generate(conversations, params)]

    def score(items):
        return [reward(messages, response) for messages, response in items]

    opt = Optimization(eta=2.0, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, max_grad_norm=None,
                       micro_batch_pairs=micro or cfg.minibatch(), temperature=1.0, warmup_ratio=0.0,
                       total_updates=cfg.iterations * updates_per_iteration(cfg), first_update=0)
    reference = make_reference(model, "all")
    trained, kind = model, OnlineLoop
    if cfg.objective == "ppo":
        critic = critic_from_policy(AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype), "float32")
        trained, kind = PolicyAndValue(model, set_critic_trainable(critic, "all")), PPOLoop
    return kind(cfg, opt, make_accelerator(1, cfg.minibatch()), trained, tokenizer, reference,
                SingleTurn(sample, tokenizer, engine.eot, cfg.samples_per_prompt), score, PROMPTS, PROMPTS[:4],
                max_invalid_fraction)


CFG = OnlineConfig(iterations=4, prompts_per_iteration=4, samples_per_prompt=2, epochs_per_iteration=2,
                   minibatch_pairs=2, kl_coef=0.05, penalty_reward_value=-1.0, validate_every=2, checkpoint_every=2)


def test_the_first_iteration_starts_at_the_reference_and_regresses_on_its_own_numbers(tiny_policy, tmp_path):
    cfg = CFG.model_copy(update={"iterations": 1, "epochs_per_iteration": 1, "minibatch_pairs": 4})
    loop = make_loop(tiny_policy, cfg)
    shards = Shards()
    history = loop.run(tmp_path / "ckpt", shards, say=lambda line: None)
    rows = shards.rows[0]
    assert all(abs(r["kl"]) < 1e-5 for r in rows)  # π_old is the reference policy before any update
    for r in rows:  # reward = score (or the penalty without end-of-turn) − kl_coef · KL
        expected = (r["score"] if r["has_end"] else -1.0) - 0.05 * r["kl"]
        assert r["reward"] == pytest.approx(expected)
    # the first update: π_θ = π_old, so d = 0 and the loss is the mean of (η · reward difference)²
    diffs = [2.0 * (rows[i]["reward"] - rows[i + 1]["reward"]) for i in range(0, len(rows), 2)]
    assert history[0]["loss"] == pytest.approx(sum(d * d for d in diffs) / len(diffs), rel=1e-5)
    assert history[0]["updates"] == 1 and history[0]["pairs"] == 4 and "val_score" in history[0]


def test_a_stopped_round_resumes_to_the_weights_of_an_uninterrupted_one(tiny_policy, tmp_path):
    whole = make_loop(tiny_policy, CFG)
    whole.run(tmp_path / "a", Shards(), say=lambda line: None)
    interrupted, shards = make_loop(tiny_policy, CFG), Shards()
    shards.stop_after = 3  # iteration 3's rollouts are made, then the process dies before writing them
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(tmp_path / "b", shards, say=lambda line: None)
    assert (tmp_path / "b" / "update-000002" / "loop.json").is_file()
    shards.stop_after = None
    resumed = make_loop(tiny_policy, CFG)
    said = []
    history = resumed.run(tmp_path / "b", shards, say=said.append)
    assert any("resuming from checkpoint update-000002: 2 of 4 iterations done" in line for line in said)
    assert [h["iteration"] for h in history] == [1, 2, 3, 4]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_reward_failing_for_many_replies_stops_the_round(tiny_policy, tmp_path):
    """Invalid rewards (NaN) leave their pairs out; more of them than score.max_invalid_fraction is a broken
    reward, not noise, and stops the round before it trains on what is left."""
    from rebelflow.config.errors import DataError

    def half_broken(messages, response):
        return float("nan") if "1 +" in messages[-1]["content"] else addition(messages, response)

    loop = make_loop(tiny_policy, CFG.model_copy(update={"iterations": 1}), half_broken, max_invalid_fraction=0.1)
    with pytest.raises(DataError, match=r"online iteration 1: \d+ of 8 rewards are invalid, more than "
                                        r"score.max_invalid_fraction \(0.1\)"):
        loop.run(tmp_path / "ckpt", Shards(), say=lambda line: None)


def test_micro_batches_accumulate_to_the_minibatch_update(tiny_policy, tmp_path):
    """A minibatch split into micro-batches (train.micro_batch_pairs) takes the same update as in one piece."""
    cfg = CFG.model_copy(update={"iterations": 2, "minibatch_pairs": 4, "penalty_reward_value": None})
    whole = make_loop(tiny_policy, cfg)  # each loop made just before it runs: accelerate's state is one per process
    start = {k: v.clone() for k, v in whole.model.state_dict().items()}
    a = whole.run(tmp_path / "a", Shards(), say=lambda line: None)
    pieces = make_loop(tiny_policy, cfg, micro=1)
    b = pieces.run(tmp_path / "b", Shards(), say=lambda line: None)
    assert pieces.micros == 4 and a[-1]["loss"] > 0  # the replies' own scores differ: a real update
    assert [h["loss"] for h in a] == pytest.approx([h["loss"] for h in b], rel=1e-4)
    assert any(not torch.equal(start[k], v) for k, v in whole.model.state_dict().items())
    for x, y in zip(whole.model.state_dict().values(), pieces.model.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_bf16_weights_train_through_fp32_copies_and_resume_with_them(tiny_policy, tmp_path):
    """Steps far below bf16's resolution still add up (in fp32 copies, rounded into the model after every
    update), and a round stopped after its checkpoint resumes with the copies, to the same weights."""
    cfg = CFG.model_copy(update={"iterations": 4, "penalty_reward_value": None})  # the replies' own scores differ
    whole = make_loop(tiny_policy, cfg, dtype=torch.bfloat16, lr=1e-5)
    start = {k: v.clone() for k, v in whole.model.state_dict().items()}
    whole.run(tmp_path / "a", Shards(), say=lambda line: None)
    copies, params = whole.masters.copies, whole.masters.params
    assert all(p.dtype == torch.bfloat16 for p in params) and all(c.dtype == torch.float32 for c in copies)
    for c, p in zip(copies, params, strict=True):
        torch.testing.assert_close(p, c.to(torch.bfloat16), rtol=0, atol=0)  # the model holds the copies, rounded
    moved = [(c.float() - start_p.float()).abs().max().item() for c, start_p in
             zip(copies, [start[k] for k, v in whole.model.named_parameters() if v.requires_grad], strict=True)]
    assert max(moved) > 0  # lr 1e-5 steps, each below bf16's resolution at the weights' scale, added up

    interrupted, shards = make_loop(tiny_policy, cfg, dtype=torch.bfloat16, lr=1e-5), Shards()
    shards.stop_after = 3
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(tmp_path / "b", shards, say=lambda line: None)
    shards.stop_after = None
    resumed = make_loop(tiny_policy, cfg, dtype=torch.bfloat16, lr=1e-5)
    resumed.run(tmp_path / "b", shards, say=lambda line: None)
    for a, b in zip(copies, resumed.masters.copies, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_engine_rests_after_every_sampling_and_before_every_update(tiny_policy, tmp_path):
    """after_sampling (a vLLM engine's sleep) comes after each iteration's sampling — or its rollouts read
    back from a shard — and each validation, before the regression that needs the memory; after_update
    (the push) after each regression."""
    events, shards = [], Shards()
    for attempt in ("sampled", "from shards"):
        loop = make_loop(tiny_policy, CFG)
        loop.after_sampling, loop.after_update = (lambda: events.append("rest")), (lambda: events.append("push"))
        regress = loop.regress
        loop.regress = lambda rows, it, regress=regress: (events.append("regress"), regress(rows, it))[1]
        loop.run(tmp_path / attempt, shards, say=lambda line: None)
        per_iteration = ["rest", "regress", "push"]
        validation = ["rest"]  # validate_every 2
        assert events == (per_iteration * 2 + validation) * 2, attempt
        events.clear()


def test_a_round_without_kl_penalty_and_a_huge_learning_rate_is_told_its_kl_runs_away(tiny_policy, tmp_path):
    """A deliberately mis-tuned online round (kl_coef 0, lr 0.2): its curve, read as the round's diagnostics
    read the online stage's summary, says the policy runs away from its reference, naming online.kl_coef."""
    from rebelflow.flows.diagnostics import diagnose

    cfg = CFG.model_copy(update={"iterations": 12, "kl_coef": 0.0, "validate_every": 12, "checkpoint_every": 12})
    history = make_loop(tiny_policy, cfg, lr=0.2).run(tmp_path / "ckpt", Shards(), say=lambda line: None)
    assert history[-1]["kl"] > 1.0, [round(h["kl"], 3) for h in history]
    manifests = {"online": {"summary": {"curve": history}, "settings": {"online": cfg.model_dump()}}}
    [said] = [d for d in diagnose(manifests) if "KL" in d]
    assert "running away from its reference" in said and "online.kl_coef (now 0.0)" in said
    assert diagnose({"online": {"summary": {"curve": history[:1] * 8}, "settings": {}}}) == []  # a flat KL: none
