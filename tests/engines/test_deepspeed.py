"""The deepspeed tier: real 2-process DeepSpeed ZeRO-2 and ZeRO-3 launches (over gloo on a machine without
GPUs) of the logprobs and train stages, with the shipped accelerate configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rebelflow.config.campaign import LauncherConfig, TinyModelConfig
from rebelflow.planning.campaign import Baseline, round_plan
from rebelflow.running.launch import _entry, kill_tree, launch
from tests.conftest import REPO, make_config
from tests.stages.helpers import run_round

pytestmark = pytest.mark.deepspeed
TINY_32 = TinyModelConfig(vocab_size=600, hidden_size=64, layers=2, heads=2, seed=0)  # vLLM loads head size 32


def zero(stage: int) -> dict:
    return {"kind": "accelerate", "num_processes": 2, "config_file": str(REPO / f"configs/accelerate/zero{stage}.yaml")}


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    from rebelflow.ml.tiny import build_policy

    return str(build_policy(tmp_path_factory.mktemp("policy32"), TINY_32))


@pytest.fixture
def prepared(tmp_path, prompts_file, policy):
    """Round 1 up to logprobs in one process; returns (config, store, refs, policy ref)."""
    cfg = make_config(tmp_path, prompts_file, policy={"model": policy}, prepare={"validation_pairs": 3},
                      train={"epochs": 3, "lr": 3e-3, "eta": 2.0, "pairs_per_update": 4, "micro_batch_pairs": 2})
    store, refs, policy_ref = run_round(cfg, policy, upto="logprobs")
    return cfg, store, refs, policy_ref


def job_named(cfg, policy_ref, name, launcher):
    jobs = round_plan(cfg.model_copy(update={"stop_after": "train"}), 1, policy_ref, Baseline()).jobs()
    job = next(j for j in jobs if j.name == name)
    return job.model_copy(update={"launcher": LauncherConfig(**launcher)})


def logprob_values(store, ref):
    rows = store.read_rows(ref) + store.read_rows(ref, "validation")
    return [(r["prompt_id"], r["chosen_logp_old"], r["rejected_logp_old"]) for r in rows]


@pytest.mark.parametrize("stage", [2, 3])
def test_logprobs_over_two_zero_ranks_equal_the_one_process_stage(prepared, stage):
    cfg, store, refs, policy_ref = prepared
    one = logprob_values(store, refs["logprobs"])
    shutil.move(store.path(refs["logprobs"]), store.root / "one-process")
    job = job_named(cfg, policy_ref, "logprobs", zero(stage))
    assert launch(job, store) == refs["logprobs"]
    two = logprob_values(store, refs["logprobs"])
    assert [p for p, _, _ in two] == [p for p, _, _ in one]  # gathered back in row order
    for (_, c1, r1), (_, c2, r2) in zip(one, two, strict=True):
        assert c2 == pytest.approx(c1, abs=1e-4) and r2 == pytest.approx(r1, abs=1e-4)
    assert store.manifest(refs["logprobs"])["summary"]["processes"] == 2


@pytest.mark.parametrize("stage", [2, 3])
def test_training_over_two_zero_ranks_saves_a_plain_hf_model(prepared, policy, stage):
    from transformers import AutoModelForCausalLM

    cfg, store, refs, policy_ref = prepared
    job = job_named(cfg, policy_ref, "train", zero(stage))
    launch(job, store)
    summary = store.manifest(job.ref)["summary"]
    assert summary["processes"] == 2 and summary["deepspeed ZeRO stage"] == stage and summary["updates"] == 6
    assert summary["last val_loss"] is not None
    folder = store.path(job.ref) / "model"
    before, after = load_file(f"{policy}/model.safetensors"), load_file(folder / "model.safetensors")
    assert set(after) == set(before) and all(after[k].shape == before[k].shape for k in before)
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= len(before) // 2
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, len(model.get_input_embeddings().weight))


@pytest.mark.vllm
def test_the_zero3_model_loads_in_vllm(prepared, tmp_path):
    vllm_python = REPO / ".venv-vllm" / "bin" / "python"
    if not vllm_python.is_file():
        pytest.fail("this check needs .venv-vllm: run `make vllm-env`")
    cfg, store, refs, policy_ref = prepared
    job = job_named(cfg, policy_ref, "train", zero(3))
    launch(job, store)
    script = tmp_path / "load.py"
    script.write_text(
        "import sys\n"
        "from rebelflow.config.campaign import VLLMConfig\n"
        "from rebelflow.engines import SamplingParams\n"
        "from rebelflow.engines.vllm import VLLMEngine\n"
        "if __name__ == '__main__':\n"
        "    engine = VLLMEngine(sys.argv[1], cfg=VLLMConfig(kv_cache_gib=1, max_model_len=128, enforce_eager=True))\n"
        "    out = engine.generate([[{'role': 'user', 'content': 'Tell me about cats.'}]], SamplingParams(1, 0.0, 1.0, 6, 0))\n"
        "    print('TOKENS', out[0][0].token_ids)\n"
    )
    done = subprocess.run([str(vllm_python), str(script), str(store.path(job.ref) / "model")], capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "TOKENS [" in done.stdout


def kill_when_printed(job, store, marker: str) -> None:
    """Launch the job's multi-process command and kill -9 the launcher and every rank (as a lost node would)
    once it prints `marker`; the job must be left incomplete."""
    job_file = store.root / "job.json"
    job_file.write_text(job.model_dump_json())
    cmd = [*_entry(job, sys.executable), "--job", str(job_file), "--store", str(store.root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if marker in line:
            kill_tree(proc.pid)
            break
    proc.wait()
    assert proc.returncode != 0 and not store.is_complete(job.ref)


def test_a_killed_zero3_training_resumes_from_its_deepspeed_checkpoint(prepared):
    cfg, store, refs, policy_ref = prepared
    job = job_named(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 20, "checkpoint_every": 4})}),
                    policy_ref, "train", zero(3))
    kill_when_printed(job, store, "checkpoint saved at update 8")
    launch(job, store)
    log = (store.root / "logs" / f"{job.ref.id}.log").read_text()
    assert "resuming from checkpoint update-000008: 8 of 40 updates already done" in log
    assert store.manifest(job.ref)["summary"]["updates"] == 40


def test_reward_model_training_over_two_zero3_ranks_saves_a_classifier(tmp_path):
    """rm_train under a 2-process ZeRO-3 launch: a pad token is added (embeddings resized under ZeRO-3), the
    held-out accuracy rises, and the saved folder is a plain classifier the reward backend scores with."""
    from transformers import AutoTokenizer

    from rebelflow.config.campaign import RewardConfig
    from rebelflow.config.loading import load_config
    from rebelflow.config.reward_model import RMConfig
    from rebelflow.ml.tiny import build_policy
    from rebelflow.planning.reward_model import rm_jobs
    from rebelflow.rewards.classifier import ClassifierReward
    from rebelflow.store.local import Store

    base = build_policy(tmp_path / "base", TINY_32)
    tok = AutoTokenizer.from_pretrained(base)
    tok.pad_token = None  # like Llama-3: rm_train must add one
    tok.save_pretrained(base)
    cfg = load_config(REPO / "configs/demo-rm.yaml", [f"model={base}", "train.epochs=2", "data.limit=400"],
                      store=str(tmp_path / "store"), root=RMConfig)
    store = Store(cfg.store.root)
    jobs = rm_jobs(cfg, train=True)
    for job in jobs:
        if job.stage == "rm_train":
            job = job.model_copy(update={"launcher": LauncherConfig(**zero(3))})
        launch(job, store)
    trained = next(j.ref for j in jobs if j.stage == "rm_train")
    summary = store.manifest(trained)["summary"]
    assert summary["processes"] == 2 and summary["pad token"] == "[PAD] (added)"
    assert summary["heldout accuracy"] > summary["heldout accuracy before training"] + 0.2
    scores = ClassifierReward(RewardConfig(backend="classifier", model=store.model_path(trained))).score(
        [([{"role": "user", "content": "Tell me about tea."}], "It is warm and kind and good."),
         ([{"role": "user", "content": "Tell me about tea."}], "It is cold and grim and awful.")])
    assert scores[0].value > scores[1].value


ONLINE = {"iterations": 3, "prompts_per_iteration": 4, "minibatch_pairs": 3, "epochs_per_iteration": 2,
          "checkpoint_every": 2, "validate_every": 2, "validation_prompts": 3, "penalty_reward_value": None}


TWO_RANKS = pytest.mark.skipif(torch.cuda.device_count() == 1, reason="two ranks need two GPUs (or none: gloo on CPU)")


PPO = {**ONLINE, "objective": "ppo", "samples_per_prompt": 1, "ppo": {"minibatch_responses": 3}}


@TWO_RANKS
@pytest.mark.parametrize(("launcher", "objective"), [("ddp", "rebel"), ("zero2", "rebel"), ("zero3", "rebel"),
                                                     ("zero3", "ppo")])
def test_an_online_round_over_two_ranks_samples_its_share_and_updates_as_one_process(tmp_path, prompts_file, policy,
                                                                                     launcher, objective):
    """One process, then two ranks (DDP over gloo, ZeRO-2, ZeRO-3): the two ranks sample the iteration's
    prompts in equal shares (ZeRO-3 generating on gathered weights); given the one process's rollouts, they
    end at its weights (each minibatch of 3 pairs and the partial one of 1 shared out in micro-batches of 1
    pair, a rank short of pairs running one with weight 0). PPO alike, with 3 responses per minibatch, its
    value model included."""
    online = ONLINE if objective == "rebel" else PPO
    cfg = make_config(tmp_path, prompts_file, policy={"model": policy}, online=online, stop_after="train",
                      train={"lr": 3e-3, "eta": 2.0, "micro_batch_pairs": 1, "launcher": {"kind": "subprocess"}})
    store, refs, policy_ref = run_round(cfg, policy, upto="prompts")
    job = round_plan(cfg, 1, policy_ref, Baseline(eval_prompts=refs["prompts"])).online  # validation: 3 of them
    assert launch(job, store) == job.ref
    one = {k: v.clone() for k, v in load_file(store.path(job.ref) / "model/model.safetensors").items()}
    rows = store.read_rows(job.ref)
    shutil.move(store.path(job.ref), tmp_path / "one-process")

    two_ranks = {"ddp": {"kind": "accelerate", "num_processes": 2}, "zero2": zero(2), "zero3": zero(3)}[launcher]
    cfg2 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"launcher": LauncherConfig(**two_ranks)})})
    two = round_plan(cfg2, 1, policy_ref, Baseline(eval_prompts=refs["prompts"])).online
    assert two.ref != job.ref  # the process count is part of the fingerprint (each rank samples with its own seeds)
    with pytest.raises(Exception, match=r"planned for 1 training process\(es\) .* launched with 2"):
        launch(job.model_copy(update={"launcher": two.launcher}), store)
    assert launch(two, store) == two.ref  # sampling on both ranks
    summary = store.manifest(two.ref)["summary"]
    assert summary["processes"] == 2 and summary["iterations"] == 3 and summary["last val_score"] is not None
    assert summary["deepspeed ZeRO stage"] == {"ddp": None, "zero2": 2, "zero3": 3}[launcher]
    sampled = store.read_rows(two.ref)
    assert [(r["iteration"], r["prompt_index"], r["sample"]) for r in sampled] == [
        (r["iteration"], r["prompt_index"], r["sample"]) for r in rows]  # the same prompts, in prompt order
    assert all(r["logp_old"] < 0 and r["response"] is not None for r in sampled)

    shutil.rmtree(store.path(two.ref))  # again over two ranks, from the one process's rollouts
    data = store.root / ".partial" / two.ref.id / "data"
    data.mkdir(parents=True)
    for shard in (tmp_path / "one-process" / "data").iterdir():
        shutil.copy(shard, data / shard.name)
    assert launch(two, store) == two.ref
    assert store.read_rows(two.ref) == rows
    got = load_file(store.path(two.ref) / "model/model.safetensors")
    start = load_file(f"{policy}/model.safetensors")
    assert sum(not torch.equal(start[k], one[k]) for k in one) >= len(one) // 2
    for k in one:
        assert torch.allclose(got[k], one[k], atol=2e-5), (k, (got[k] - one[k]).abs().max().item())
    if objective == "ppo":
        one_value = load_file(tmp_path / "one-process" / "value/model.safetensors")
        got_value = load_file(store.path(two.ref) / "value/model.safetensors")
        assert one_value.keys() == got_value.keys()
        # the value model trained: its backbone (a copy of the starting policy's) moved
        assert sum(not torch.equal(one_value[k], start["model." + k.removeprefix("backbone.")])
                   for k in one_value if k.startswith("backbone.")) >= len(one_value) // 2
        for k in one_value:  # reduction order over the ranks: up to ~3e-5 here (an update moves weights by ~lr, 3e-3)
            gap = (got_value[k] - one_value[k]).abs().max().item()
            assert gap < 1e-4, (k, gap)


@TWO_RANKS
def test_a_killed_online_round_over_two_zero3_ranks_resumes_byte_identical(tmp_path, prompts_file, policy):
    """kill -9 of the launcher and both ranks after the checkpoint at iteration 2 of 4: the next launch
    resumes from it (DeepSpeed's partitioned state) and finishes with the data and weights of an
    uninterrupted two-rank round."""
    online = {**ONLINE, "iterations": 4}
    cfg = make_config(tmp_path, prompts_file, policy={"model": policy}, online=online, stop_after="train",
                      train={"lr": 3e-3, "eta": 2.0, "micro_batch_pairs": 1, "launcher": zero(3)})
    store, _, policy_ref = run_round(cfg, policy, upto="prompts")
    job = round_plan(cfg, 1, policy_ref, Baseline()).online
    assert launch(job, store) == job.ref
    files = store.manifest(job.ref)["files"]
    expected = {name: e["sha256"] for name, e in files.items() if name.startswith(("data/", "model/"))}
    shutil.rmtree(store.path(job.ref))

    kill_when_printed(job, store, "checkpoint saved at update 2")
    launch(job, store)
    log = (store.root / "logs" / f"{job.ref.id}.log").read_text()
    assert "resuming from checkpoint update-000002: 2 of 4 iterations done" in log
    files = store.manifest(job.ref)["files"]
    assert {name: e["sha256"] for name, e in files.items() if name.startswith(("data/", "model/"))} == expected
