"""Kill -9 at a random point of a stage (generate, multi-turn generate, score, logprobs, train, sft, online with
REBEL and with PPO), then run it again: the artifact it finishes is byte-identical to
an uninterrupted run's (every data and model file), and no stage process survives the kill.

The launcher (a separate process, as a flow would be) is killed at a seeded random fraction of the stage's
uninterrupted run time ($REBELFLOW_FAULT_SEED picks another set of points), so kills land at different
points of start-up, sharding, checkpoints and saving.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from rebelflow.planning.campaign import Baseline, baseline, round_plan
from rebelflow.running.launch import launch
from rebelflow.store.local import Store
from tests.conftest import make_config
from tests.reliability.test_kill import LAUNCHER, kill_and_wait
from tests.stages.helpers import run_round

# stage under test → (the step before it, config changes that make it run in its own process, long enough)
CASES = {
    "generate": ("prompts", {"generate": {"launcher": {"kind": "subprocess"}, "shard_size": 2, "batch_size": 2}}),
    "score": ("generate", {"score": {"launcher": {"kind": "subprocess"}, "shard_size": 2}}),
    "logprobs": ("prepare", {"logprobs": {"launcher": {"kind": "subprocess"}, "batch_pairs": 1}}),
    "train": ("logprobs", {"train": {"launcher": {"kind": "accelerate"}, "epochs": 12, "checkpoint_every": 3}}),
    "sft": (None, {"sft": {"data": "DEMOS", "epochs": 6, "examples_per_update": 4, "micro_batch": 2,
                           "checkpoint_every": 3, "launcher": {"kind": "accelerate"}}}),
    "online": ("prompts", {"online": {"iterations": 8, "prompts_per_iteration": 4, "minibatch_pairs": 2,
                                      "checkpoint_every": 2, "validate_every": 4, "validation_prompts": 4},
                           "train": {"launcher": {"kind": "subprocess"}}, "stop_after": "train"}),
    "online-ppo": ("prompts", {"online": {"objective": "ppo", "iterations": 8, "prompts_per_iteration": 4,
                                          "samples_per_prompt": 1, "checkpoint_every": 2, "validate_every": 4,
                                          "validation_prompts": 4, "ppo": {"minibatch_responses": 2}},
                               "train": {"launcher": {"kind": "subprocess"}}, "stop_after": "train"}),
    "dialogues": ("prompts", {"generate": {"launcher": {"kind": "subprocess"}, "shard_size": 2, "batch_size": 2},
                              "dialogue": {"turns": 2, "user": {"kind": "scripted",
                                                                "function": "rebelflow.users.examples:addition_quiz"}}}),
}


def data_hashes(store, ref) -> dict[str, str]:
    """sha256 of every data and model file (the card and manifest hold the time they were made)."""
    files = store.manifest(ref)["files"]
    return {name: entry["sha256"] for name, entry in files.items() if name.startswith(("data/", "model/", "value/"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_killed_stage_finishes_byte_identical(tmp_path, prompts_file, tiny_policy, case):
    before, changes = CASES[case]
    if case == "sft":  # round 0: demonstrations, answered by the prompts themselves
        demos = tmp_path / "demos.jsonl"
        demos.write_text("".join(json.dumps({"prompt": f"Say {i}.", "response": f"{i}!"}) + "\n" for i in range(16)))
        changes = {"sft": {**changes["sft"], "data": str(demos)}}
    cfg = make_config(tmp_path, prompts_file, **changes)
    if case == "sft":
        store = Store(cfg.store.root)
        job = next(j for j in baseline(cfg.model_copy(update={"policy": cfg.policy.model_copy(
            update={"model": tiny_policy})})).jobs if j.name == "sft")
    else:
        store, refs, policy = run_round(cfg, tiny_policy, upto=before)
        step = {"dialogues": "generate", "online-ppo": "online"}.get(case, case)
        stop = {"stop_after": "train"} if step == "online" else {"stop_after": step}
        job = getattr(round_plan(cfg.model_copy(update=stop), 1, policy, Baseline()), step)
    started = time.time()
    assert launch(job, store, emit=lambda line: None) == job.ref  # uninterrupted
    duration = time.time() - started
    expected = data_hashes(store, job.ref)
    shutil.rmtree(store.path(job.ref))

    rng = random.Random(f"{case}:{os.environ.get('REBELFLOW_FAULT_SEED', '0')}")
    fraction = rng.uniform(0.3, 0.9)
    for _ in range(4):  # a kill that came after the work was done proves nothing: kill earlier
        kill_launcher_after(job, store, tmp_path, fraction * duration)
        if not store.is_complete(job.ref):
            break
        shutil.rmtree(store.path(job.ref))
        fraction /= 2
    assert not store.is_complete(job.ref), f"no kill landed before the {case} stage finished"

    assert launch(job, store, emit=lambda line: None) == job.ref  # the next attempt finishes the work
    got = data_hashes(store, job.ref)
    assert got == expected, (f"{case} killed {fraction * duration:.1f} s into a {duration:.1f} s run: "
                             f"{sorted(set(got.items()) ^ set(expected.items()))}")


def kill_launcher_after(job, store, tmp_path, seconds: float) -> None:
    """Launch the job from another process (as a flow would), kill -9 that process after `seconds`, and check
    that no stage process survives it."""
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(job_file), str(store.root)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        launcher.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        assert not kill_and_wait(launcher, job.ref.id, 5), f"a {job.stage} process outlived its launcher"


def test_a_killed_judge_stage_finishes_byte_identical_and_asks_nothing_twice(tmp_path, prompts_file, tiny_policy,
                                                                              monkeypatch):
    """kill -9 of the judge stage part-way: the next attempt finishes with the artifact of an uninterrupted
    run, and the judgments made before the kill come from the cache (the judge is called fewer times)."""
    from rebelflow.config.judge import JudgeConfig
    from rebelflow.judges import judge_identity
    from rebelflow.planning.jobs import make_job
    from rebelflow.stages import judge

    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("REBELFLOW_TEST_JUDGE_LOG", str(calls))
    cfg = make_config(tmp_path, prompts_file)
    store, refs, _ = run_round(cfg, tiny_policy, upto="evaluate")
    spec = JudgeConfig(kind="callable", function=f"{__file__.rsplit('/', 1)[0]}/slow_judge.py:longer")
    job = make_job(judge, 1, judge.Settings(judge=spec, judge_identity=judge_identity(spec)), [refs["evaluate"]])
    started = time.time()
    assert launch(job, store, emit=lambda line: None) == job.ref
    duration, expected = time.time() - started, data_hashes(store, job.ref)
    total = len(calls.read_text().splitlines())
    assert 4 <= total <= 2 * len(store.read_rows(refs["evaluate"]))  # both orders (identical questions asked once)
    shutil.rmtree(store.path(job.ref))
    shutil.rmtree(store.root / "judgments")
    calls.unlink()

    job_file = tmp_path / "judge-job.json"
    job_file.write_text(job.model_dump_json())
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(job_file), str(store.root)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((store.root / "judgments").rglob("*.json"))) < 2 and time.time() < deadline:
        time.sleep(0.02)  # two judgments made (each takes 0.3 s): kill before the rest
    assert not kill_and_wait(launcher, job.ref.id, 5), "the judge stage outlived its launcher"
    assert not store.is_complete(job.ref), f"the kill came after the stage finished ({duration:.1f} s)"
    before = len(calls.read_text().splitlines())
    assert launch(job, store, emit=lambda line: None) == job.ref
    assert data_hashes(store, job.ref) == expected
    assert len(calls.read_text().splitlines()) - before <= total - 2  # the two cached ones were not asked again
