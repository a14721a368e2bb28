"""logprobs, train, sft and evaluate on a tiny random model."""

import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rebelflow.ml.models import load_causal_lm, set_trainable
from rebelflow.ml.tiny import build_tokenizer
from rebelflow.planning.campaign import Baseline, round_plan
from rebelflow.running.launch import _entry, launch
from rebelflow.stages import evaluate, sft
from rebelflow.store.refs import external_model
from tests.conftest import make_config, write_prompts
from tests.stages.helpers import run_round


def weights(folder):
    return load_file(f"{folder}/model.safetensors")


def test_logprobs_equal_a_direct_forward_pass(tmp_path, prompts_file, tiny_policy):
    cfg = make_config(tmp_path, prompts_file, generate={"temperature": 0.7})
    store, refs, _ = run_round(cfg, tiny_policy, upto="logprobs")
    rows = store.read_rows(refs["logprobs"]) + store.read_rows(refs["logprobs"], "validation")
    assert len(rows) == 12
    model = load_causal_lm(tiny_policy, "float32").eval()
    for r in rows:
        for side in ("chosen", "rejected"):
            ids = torch.tensor([r[f"{side}_ids"]])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1] / 0.7
            token_logps = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
            direct = (token_logps * torch.tensor(r[f"{side}_mask"][1:])).sum().item()
            assert r[f"{side}_logp_old"] == pytest.approx(direct, abs=1e-4)
    assert "torch=" in store.manifest(refs["logprobs"])["settings"]["hardware"]


def test_train_changes_parameters_and_lowers_the_loss(tmp_path, prompts_file, tiny_policy):
    (tmp_path / "rules.py").write_text("def length(messages, response):\n    return len(response) / 10\n")
    cfg = make_config(tmp_path, prompts_file, reward={"function": f"{tmp_path / 'rules.py'}:length"},
                      train={"epochs": 8, "eta": 2.0, "lr": 3e-3})
    store, refs, _ = run_round(cfg, tiny_policy, upto="train")
    manifest = store.manifest(refs["train"])
    summary = manifest["summary"]
    assert summary["updates"] == 16  # 10 training pairs: 2 updates of 4 pairs per epoch
    assert summary["first loss"] > 0.1 and summary["last loss"] < 0.5 * summary["first loss"]
    assert summary["last val_loss"] is not None
    before, after = weights(tiny_policy), weights(store.path(refs["train"]) / "model")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    lines = (store.path(refs["train"]) / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 16 and "tokenizer_config.json" in os.listdir(store.path(refs["train"]) / "model")
    assert not (store.path(refs["train"]) / "checkpoints").exists()


def test_top_k_layers_train_only_those_with_the_final_norm_and_an_untied_head(tmp_path, prompts_file, tiny_policy):
    """As the papers' chat scripts: everything below the top k layers and the embeddings stay frozen."""
    model = load_causal_lm(tiny_policy, "float32")
    tied = model.config.tie_word_embeddings
    model, n = set_trainable(model, 1)
    head = 0 if tied else model.lm_head.weight.numel()
    assert n == sum(p.numel() for p in [*model.model.layers[-1].parameters(), *model.model.norm.parameters()]) + head
    assert not model.get_input_embeddings().weight.requires_grad
    untied = load_causal_lm(tiny_policy, "float32")
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    untied, _ = set_trainable(untied, 1)
    assert untied.lm_head.weight.requires_grad and not untied.get_input_embeddings().weight.requires_grad
    cfg = make_config(tmp_path, prompts_file, train={"trainable": 1, "epochs": 2})
    store, refs, _ = run_round(cfg, tiny_policy, upto="train")
    before, after = weights(tiny_policy), weights(store.path(refs["train"]) / "model")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = ("model.layers.1.", "model.norm.") + (() if tied else ("lm_head.",))
    assert changed and all(k.startswith(allowed) for k in changed) and any(k.startswith("model.layers.1.") for k in changed)


def test_lora_trains_adapters_and_saves_them_merged_into_plain_weights(tmp_path, prompts_file, tiny_policy):
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    cfg = make_config(tmp_path, prompts_file, train={"trainable": "lora", "lora": lora, "epochs": 4, "lr": 1e-2})
    store, refs, _ = run_round(cfg, tiny_policy, upto="train")
    assert store.manifest(refs["train"])["summary"]["trainable parameters"] == 2 * 2 * 4 * (32 + 32)
    before, after = weights(tiny_policy), weights(store.path(refs["train"]) / "model")
    assert set(after) == set(before)  # an ordinary HF model: no adapter tensors left
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


def test_killed_training_resumes_from_its_checkpoint(tmp_path, prompts_file, tiny_policy):
    cfg = make_config(tmp_path, prompts_file, train={
        "epochs": 30, "checkpoint_every": 4, "launcher": {"kind": "accelerate"}})
    store, refs, policy = run_round(cfg, tiny_policy, upto="logprobs")
    job = next(j for j in round_plan(cfg.model_copy(update={"stop_after": "train"}), 1, policy, Baseline()).jobs()
               if j.stage == "train")
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    cmd = [*_entry(job, sys.executable), "--job", str(job_file), "--store", str(store.root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in proc.stdout:
        if "checkpoint saved at update 8" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode != 0 and not store.is_complete(job.ref)
    logged = []
    assert launch(job, store, emit=logged.append) == job.ref
    log = (store.root / "logs" / f"{job.ref.id}.log").read_text()
    assert "resuming from checkpoint update-000008: 8 of 60 updates already done" in log
    assert store.manifest(job.ref)["summary"]["updates"] == 60


def test_evaluate_counts_ties_half_and_leaves_out_invalid_prompts():
    def row(pid, rewards, text="x"):
        return {"prompt_id": pid, "messages": [], "responses": [text], "response_ids": [[1, 2]], "rewards": rewards}

    new = [row("a", [1.0, 0.0]), row("b", [0.5]), row("c", [0.0]), row("d", [math.nan])]
    base = [row("a", [0.2]), row("b", [0.5]), row("c", [1.0]), row("d", [1.0])]
    rows, skipped = evaluate.compare(new, base)
    assert [r["outcome"] for r in rows] == [1.0, 0.5, 0.0] and skipped == 1
    summary = evaluate.summarise(rows, skipped)
    assert summary["win_rate"] == pytest.approx(0.5)
    assert summary["reward_mean"] == pytest.approx((0.5 + 0.5 + 0.0) / 3, abs=1e-4)
    assert summary["baseline_reward_mean"] == pytest.approx((0.2 + 0.5 + 1.0) / 3, abs=1e-4)


def test_evaluate_stage_compares_the_trained_policy_with_the_baseline(tmp_path, prompts_file, tiny_policy):
    cfg = make_config(tmp_path, prompts_file)
    store, refs, _ = run_round(cfg, tiny_policy, upto="evaluate")
    rows = store.read_rows(refs["evaluate"])
    assert len(rows) == 4 and {r["outcome"] for r in rows} <= {0.0, 0.5, 1.0}
    # the baseline's evaluation samples are the same artifact in every round
    assert store.manifest(refs["evaluate"])["inputs"][1] == refs["baseline_eval_score"].id


def test_sft_masks_assistant_tokens_and_lowers_the_loss(tmp_path, tiny_policy):
    demos = [{"prompt": f"What is {a} + {b}?", "response": str(a + b)} for a in range(4) for b in range(4)]
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]
    path = write_prompts(tmp_path / "demos.jsonl", demos)
    settings = sft.Settings(data=str(path), data_identity="x", lr=1e-2, epochs=12, examples_per_update=8, micro_batch=4,
                            checkpoint_every=100, launcher={"kind": "inprocess"})
    tok = build_tokenizer(600)
    data, dropped = sft.examples(settings, tok)
    assert len(data) == 16 and not dropped
    ids, mask = data[3]
    assert tok.decode([t for t, m in zip(ids, mask, strict=True) if m]) == "3<|im_end|>"
    conv_path = write_prompts(tmp_path / "conv.jsonl", [{"messages": conv}])
    multi = sft.Settings(**{**settings.model_dump(), "data": str(conv_path), "messages_column": "messages"})
    turns, _ = sft.examples(multi, tok)
    assert [tok.decode([t for t, m in zip(i, k, strict=True) if m]) for i, k in turns] == [
        "Hello<|im_end|>", "4<|im_end|>"]
    from rebelflow.store.local import Store

    store = Store(tmp_path / "store")
    ref = sft.run(settings, external_model(tiny_policy), store=store)
    summary = store.manifest(ref)["summary"]
    assert summary["updates"] == 24 and summary["last loss"] < 0.5 * summary["first loss"]


def test_the_logprobs_key_is_the_hardware_that_computes_them(tmp_path, prompts_file, tiny_policy):
    """The planner asks the logprobs launcher's interpreter for its hardware; the stage refuses to run where
    it was not keyed (its π_old would be filed under another machine's key) and records where it ran."""
    from rebelflow.config.campaign import LauncherConfig
    from rebelflow.config.errors import ConfigError
    from rebelflow.ml.models import hardware_fingerprint
    from rebelflow.planning.environments import hardware_key
    from rebelflow.stages import logprobs

    other = tmp_path / "other-python"
    other.write_text("#!/bin/sh\necho 'torch=9.9;device=NVIDIA H200;dtype=bfloat16;attn=sdpa'\n")
    other.chmod(0o755)
    assert hardware_key(LauncherConfig(kind="subprocess", python=str(other)), "bfloat16", "sdpa") == \
        "torch=9.9;device=NVIDIA H200;dtype=bfloat16;attn=sdpa"
    assert hardware_key(LauncherConfig(), "float32", "sdpa") == hardware_fingerprint("float32", "sdpa")
    cfg = make_config(tmp_path, prompts_file)
    store, refs, policy = run_round(cfg, tiny_policy, upto="logprobs")
    assert store.manifest(refs["logprobs"])["summary"]["ran on"] == hardware_fingerprint("float32", "sdpa")
    elsewhere = logprobs.Settings(**{**store.manifest(refs["logprobs"])["settings"],
                                     "hardware": "torch=9.9;device=NVIDIA H200;dtype=float32;attn=sdpa"})
    with pytest.raises(ConfigError, match=r"planned for torch=9.9;device=NVIDIA H200.* but runs on torch="):
        logprobs.run(elsewhere, refs["prepare"], policy, store=store)


def test_bf16_weights_train_through_fp32_master_copies_and_a_fit_resumes_with_them(tmp_path, tiny_policy):
    """train, sft and rm_train with 16-bit weights (dtype: bfloat16, no DeepSpeed): AdamW steps fp32 copies,
    rounded into the model after each update, so steps far below bf16's resolution still add up (stepped
    in bf16 itself, most weights would not move at all); a fit stopped after a checkpoint resumes with the
    copies and ends at the uninterrupted fit's weights."""
    from types import SimpleNamespace

    from rebelflow.ml.driver import Fit, fit_model, plan_updates

    rng = torch.Generator().manual_seed(0)
    items = [(torch.randint(4, 100, (12,), generator=rng).tolist(), [0] * 4 + [1] * 8) for _ in range(8)]
    # Adam steps of at most 3e-5, below half of bf16's resolution for weights over 0.008 in size (most of them)
    settings = SimpleNamespace(lr=3e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_ratio=0.0,
                               max_grad_norm=1.0, epochs=6, seed=0, checkpoint_every=2, tracking=None)
    calls = {"n": 0, "stop_at": None}

    def loss(model, micro):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise KeyboardInterrupt
        return sft.reply_loss(model, micro, 0)

    def fit(folder):
        model = load_causal_lm(tiny_policy, "bfloat16")
        f = Fit(section="sft", per_update_key="examples_per_update", items=items, per_update=4, micro_batch=2, loss=loss)
        return model, fit_model(model, f, settings, plan_updates(f, settings, "examples", ""), tmp_path / folder)

    start = {k: v.float().clone() for k, v in load_causal_lm(tiny_policy, "bfloat16").named_parameters()}
    _, whole = fit("whole")
    assert len(whole.history) == 12
    moved = torch.cat([(whole.weights[k].float() - start[k]).abs().flatten() for k in start])
    assert moved.median() > 0  # most weights moved: 12 small steps added up in fp32, then rounded

    calls["n"], calls["stop_at"] = 0, 2 * 3 + 1  # stopped in update 4, after the checkpoint at update 2
    with pytest.raises(KeyboardInterrupt):
        fit("resumed")
    calls["stop_at"] = None
    _, resumed = fit("resumed")
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for k, v in whole.weights.items():
        torch.testing.assert_close(resumed.weights[k], v, rtol=0, atol=0)
