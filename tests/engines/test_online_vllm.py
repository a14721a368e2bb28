"""vLLM colocated with the trainer of an online round (vllm tier, CPU build): after an update is pushed into
the engine its greedy tokens equal transformers' greedy tokens of the updated policy — top-k training and
LoRA (merged) alike — and a whole online round samples with an engine in its own training process."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REPO, make_config
from tests.engines.test_deepspeed import TWO_RANKS
from tests.engines.test_vllm import VLLM, VLLM_PYTHON, policy, vllm_env  # noqa: F401  (fixtures)
from tests.stages.helpers import run_round

pytestmark = pytest.mark.vllm

PUSH = r"""
import json, sys, torch
from rebelflow.config.campaign import LoraConfig
from rebelflow.config.engines import VLLMConfig
from rebelflow.engines.base import SamplingParams
from rebelflow.engines.hf import HFEngine
from rebelflow.engines.vllm import VLLMEngine
from rebelflow.ml.models import engine_weights, load_causal_lm, set_trainable

path = sys.argv[1]
engine = VLLMEngine(path, "float32", cfg=VLLMConfig(**json.loads(sys.argv[2])), in_process=True)
prompts = [[{"role": "user", "content": f"Tell me about item {i}."}] for i in range(8)]
greedy = SamplingParams(1, 0.0, 1.0, 12, 0)

def tokens(e):
    return [c[0].token_ids for c in e.generate(prompts, greedy)]

out = {"start": tokens(engine)}
for trainable in (1, "lora"):
    model, _ = set_trainable(load_causal_lm(path, "float32"), trainable, LoraConfig(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(7)
    with torch.no_grad():  # what updates of the trained parameters do
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    want = tokens(HFEngine.resident(model.eval(), engine.tokenizer))
    engine.push(engine_weights(model, trainable))
    out[str(trainable)] = {"vllm": tokens(engine), "hf": want, "pushed": len(engine_weights(model, trainable))}
    engine.push(engine_weights(load_causal_lm(path, "float32"), "all"))  # back to the start for the next case
print("RESULT " + json.dumps(out))
"""


def test_pushed_weights_give_the_greedy_tokens_of_the_updated_policy(policy):  # noqa: F811
    done = subprocess.run([str(VLLM_PYTHON), "-c", PUSH, policy, json.dumps(VLLM)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    for case in ("1", "lora"):
        assert out[case]["vllm"] == out[case]["hf"], case
        assert out[case]["hf"] != out["start"], f"{case}: the update must change the greedy tokens to prove anything"
    assert out["1"]["pushed"] == 9 + 1  # the top layer's 9 tensors and the final norm (a tied head is the embeddings)


SLEEP = r"""
import json, sys, torch
if not torch.cuda.is_available():
    print("RESULT null")
    raise SystemExit(0)
from rebelflow.config.engines import VLLMConfig
from rebelflow.engines.base import SamplingParams
from rebelflow.engines.hf import HFEngine
from rebelflow.engines.vllm import VLLMEngine
from rebelflow.ml.models import engine_weights, load_causal_lm, set_trainable

path = sys.argv[1]
engine = VLLMEngine(path, "float32", cfg=VLLMConfig(gpu_memory_utilization=0.3, enforce_eager=True, max_model_len=256),
                    in_process=True)
prompts = [[{"role": "user", "content": f"Tell me about item {i}."}] for i in range(8)]
greedy = SamplingParams(1, 0.0, 1.0, 12, 0)
start = [c[0].token_ids for c in engine.generate(prompts, greedy)]
awake = torch.cuda.mem_get_info()[0]
engine.rest()
resting = torch.cuda.mem_get_info()[0]
model, _ = set_trainable(load_causal_lm(path, "float32"), 1, None)
torch.manual_seed(7)
with torch.no_grad():
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn_like(p) * 0.3)
model = model.cuda().eval()
want = [c[0].token_ids for c in HFEngine.resident(model, engine.tokenizer).generate(prompts, greedy)]
engine.push(engine_weights(model, 1))  # wakes the weights
got = [c[0].token_ids for c in engine.generate(prompts, greedy)]  # wakes the KV cache
print("RESULT " + json.dumps({"freed": (resting - awake) / torch.cuda.mem_get_info()[1], "start": start,
                              "want": want, "got": got}))
"""


def test_a_sleeping_engine_frees_its_gpu_memory_and_wakes_with_the_pushed_weights(policy):  # noqa: F811
    """GPU only (vLLM's CPU build has no sleep mode): rest() frees the engine's share of the GPU (weights to
    CPU memory, KV cache dropped); a push wakes the weights, a generation the cache, with the new weights."""
    done = subprocess.run([str(VLLM_PYTHON), "-c", SLEEP, policy], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    if out is None:
        pytest.skip("vLLM's sleep mode needs a CUDA GPU (the CPU build has none); runs in the vllm tier on a GPU")
    assert out["freed"] > 0.2  # most of the engine's 0.3 share
    assert out["got"] == out["want"] and out["want"] != out["start"]


ZERO3_PUSH = r"""
import json, sys, torch
from rebelflow.config.engines import VLLMConfig
from rebelflow.engines.base import SamplingParams
from rebelflow.engines.hf import HFEngine
from rebelflow.engines.vllm import VLLMEngine
from rebelflow.ml.distributed import finish_distributed, full_weights, make_accelerator
from rebelflow.ml.models import engine_weights, load_causal_lm, set_trainable

path = sys.argv[1]
model, _ = set_trainable(load_causal_lm(path, "float32"), 1)  # loaded whole, as the online stage does
torch.manual_seed(7)
with torch.no_grad():  # what updates do (the same on every rank)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn_like(p) * 0.3)
accelerator = make_accelerator(1, 1)  # the launch's process group, which each rank's engine joins
engine = VLLMEngine(path, "float32", cfg=VLLMConfig(**json.loads(sys.argv[2])), in_process=True)
rank = accelerator.process_index
prompts = [[{"role": "user", "content": f"Rank {rank} asks about item {i}."}] for i in range(4 + rank)]
greedy = SamplingParams(1, 0.0, 1.0, 12, 0)
start = [c[0].token_ids for c in engine.generate(prompts, greedy)]
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
model, optimizer = accelerator.prepare(model, optimizer)
unwrapped = accelerator.unwrap_model(model)
partitioned = sum(p.numel() == 0 for p in unwrapped.parameters())  # ZeRO-3 holds a shard elsewhere
with full_weights(accelerator, unwrapped):
    want = [c[0].token_ids for c in HFEngine.resident(unwrapped.eval(), engine.tokenizer).generate(prompts, greedy)]
    engine.push(engine_weights(unwrapped, 1))
got = [c[0].token_ids for c in engine.generate(prompts, greedy)]
print("RESULT " + json.dumps({"rank": rank, "partitioned": partitioned, "start": start, "want": want, "got": got}),
      flush=True)
engine.close()
finish_distributed()
"""


@TWO_RANKS
def test_zero3_ranks_push_their_gathered_weights_into_their_own_engines(policy, tmp_path):  # noqa: F811
    """Two ZeRO-3 ranks, each with its own vLLM engine (different prompts, different numbers of requests):
    the weights gathered from the partitions and pushed give the greedy tokens of the updated policy, which
    transformers generates on the same gathered weights (DeepSpeed's hooks set aside)."""
    script = tmp_path / "zero3_push.py"
    script.write_text(ZERO3_PUSH)
    cmd = [str(VLLM_PYTHON), "-m", "accelerate.commands.launch", "--num_processes", "2", "--config_file",
           str(REPO / "configs/accelerate/zero3.yaml"), "--mixed_precision", "no", str(script), policy, json.dumps(VLLM)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in done.stdout.splitlines() if "RESULT " in line]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        assert r["partitioned"] > 0
        assert r["got"] == r["want"] and r["want"] != r["start"], r


@pytest.mark.parametrize("objective", ["rebel", "ppo"])
def test_an_online_round_samples_with_vllm_in_its_training_process(tmp_path, prompts_file, policy, objective):  # noqa: F811
    """REBEL, and PPO (one reply per prompt; its value model trains its top layer beside the policy's and only
    the policy is pushed into the engine)."""
    launcher = {"kind": "subprocess", "env": "vllm"}
    ppo = {"objective": "ppo", "samples_per_prompt": 1, "ppo": {"minibatch_responses": 2}} if objective == "ppo" else {}
    cfg = make_config(
        tmp_path, prompts_file, policy={"model": policy}, stop_after="train",
        generate={"engine": "vllm", "vllm": {**VLLM, "gpu_memory_utilization": 0.3}, "max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0},
        online={"iterations": 3, "prompts_per_iteration": 4, "minibatch_pairs": 2, "checkpoint_every": 2,
                "validate_every": 3, "validation_prompts": 4, **ppo},
        train={"launcher": launcher, "trainable": 1, "lr": 1e-2, "eta": 1.0},
        evaluate={"prompts": {"source": str(prompts_file), "id_column": "id", "per_round": 4}, "n": 2,
                  "max_new_tokens": 8, "launcher": launcher},
    )
    store, refs, _ = run_round(cfg, policy, upto="evaluate")
    rows = store.read_rows(refs["online"])
    assert len(rows) == 3 * 4 * (1 if objective == "ppo" else 2) and {r["iteration"] for r in rows} == {1, 2, 3}
    assert "vllm" in (store.root / "logs" / f"{refs['online'].id}.log").read_text().lower()
    assert all(abs(r["kl"]) < 1e-4 for r in rows if r["iteration"] == 1)  # π_old is the reference at first
    assert any(abs(r["kl"]) > 1e-3 for r in rows if r["iteration"] == 3)  # the pushed policy moved away from it
    metrics = [json.loads(line) for line in (store.path(refs["online"]) / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2, 3] and "val_score" in metrics[-1]
    assert store.is_complete(refs["evaluate"])  # the round's policy evaluated against the starting one


@TWO_RANKS
def test_an_online_round_over_two_zero3_ranks_samples_with_an_engine_on_each(tmp_path, prompts_file, policy):  # noqa: F811
    """A whole round over two ZeRO-3 ranks in the vLLM environment: each rank samples its share of the
    prompts with its own engine, which takes the gathered weights after every iteration."""
    cfg = make_config(
        tmp_path, prompts_file, policy={"model": policy}, stop_after="train",
        generate={"engine": "vllm", "vllm": {**VLLM, "gpu_memory_utilization": 0.3}, "max_new_tokens": 8,
                  "temperature": 1.0, "top_p": 1.0},
        online={"iterations": 3, "prompts_per_iteration": 4, "minibatch_pairs": 2, "checkpoint_every": 2},
        train={"launcher": {"kind": "accelerate", "num_processes": 2, "env": "vllm",
                            "config_file": str(REPO / "configs/accelerate/zero3.yaml")},
               "trainable": 1, "lr": 1e-2, "eta": 1.0, "micro_batch_pairs": 1},
    )
    store, refs, _ = run_round(cfg, policy, upto="online")
    summary = store.manifest(refs["online"])["summary"]
    assert summary["processes"] == 2 and summary["deepspeed ZeRO stage"] == 3
    rows = store.read_rows(refs["online"])
    assert len(rows) == 3 * 4 * 2 and len({(r["iteration"], r["prompt_index"]) for r in rows}) == 3 * 4
    assert all(abs(r["kl"]) < 1e-4 for r in rows if r["iteration"] == 1)
    assert any(abs(r["kl"]) > 1e-3 for r in rows if r["iteration"] == 3)
    log = (store.root / "logs" / f"{refs['online'].id}.log").read_text()
    assert "external launcher" in log and "Traceback" not in log


def test_a_killed_online_round_with_vllm_resumes_byte_identical(tmp_path, prompts_file, policy):  # noqa: F811
    """kill -9 of the launcher after a checkpoint: the next attempt resumes there, pushes the checkpoint's
    weights into its new engine before sampling, and finishes with the artifact of an uninterrupted round."""
    import shutil
    import subprocess as sp
    import sys
    import time

    from rebelflow.planning.campaign import Baseline, round_plan
    from rebelflow.running.launch import launch
    from tests.reliability.test_kill import LAUNCHER, kill_and_wait
    from tests.reliability.test_kill_resume import data_hashes

    cfg = make_config(
        tmp_path, prompts_file, policy={"model": policy}, stop_after="train",
        generate={"engine": "vllm", "vllm": {**VLLM, "gpu_memory_utilization": 0.3}, "max_new_tokens": 32, "temperature": 1.0, "top_p": 1.0},
        online={"iterations": 8, "prompts_per_iteration": 8, "minibatch_pairs": 2, "checkpoint_every": 2},
        train={"launcher": {"kind": "subprocess", "env": "vllm"}, "trainable": 1, "lr": 1e-2, "eta": 1.0},
    )
    store, _, start = run_round(cfg, policy, upto="prompts")
    job = round_plan(cfg, 1, start, Baseline()).online
    assert launch(job, store, emit=lambda line: None) == job.ref
    expected = data_hashes(store, job.ref)
    shutil.rmtree(store.path(job.ref))
    log = store.root / "logs" / f"{job.ref.id}.log"
    assert "Traceback" not in log.read_text()  # the engine shut down before the process group ended
    log.unlink()

    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    launcher = sp.Popen([sys.executable, "-c", LAUNCHER, str(job_file), str(store.root)], stdout=sp.DEVNULL, stderr=sp.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and '"iteration": 3,' not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)  # iteration 3 done: the checkpoint of iteration 2 is on disk, the round is not
    assert not kill_and_wait(launcher, job.ref.id, 5), "the online stage outlived its launcher"
    assert not store.is_complete(job.ref), "the kill came after the round finished: it proves nothing"
    assert launch(job, store, emit=lambda line: None) == job.ref
    assert "resuming from checkpoint update-000002" in log.read_text()
    assert data_hashes(store, job.ref) == expected
