import math

import pytest

from rebelflow.config.errors import DataError, TransientError
from rebelflow.config.loading import load_config
from rebelflow.planning.campaign import Baseline, campaign_jobs, round_plan
from rebelflow.running import stage_cli
from rebelflow.running.launch import launch
from rebelflow.stages import generate, prepare
from rebelflow.store.local import Store
from rebelflow.store.refs import external_model
from tests.conftest import make_config
from tests.stages.helpers import run_round


def test_generate_n_seeded_samples_per_prompt(tmp_path, prompts_file, tiny_policy):
    cfg = make_config(tmp_path, prompts_file)
    store, refs, _ = run_round(cfg, tiny_policy, upto="generate")
    rows = store.read_rows(refs["generate"])
    assert len(rows) == 12
    for r in rows:
        assert len(r["responses"]) == len(r["response_ids"]) == len(r["finish_reasons"]) == 3
        assert r["seeds"] == [0, 50, 100]
        for ids, reason in zip(r["response_ids"], r["finish_reasons"], strict=True):
            assert 0 < len(ids) <= 12 and reason in ("stop", "length")
            assert (reason == "length") == (len(ids) == 12 and ids[-1] != 2)  # 2 = <|im_end|>
    assert sum(len(set(r["responses"])) == 3 for r in rows) >= 10  # a prompt's samples differ
    manifest = store.manifest(refs["generate"])
    assert len(manifest["splits"]["train"]["files"]) == 3  # shard_size 4
    # same settings, another store: the same samples
    again = make_config(tmp_path / "again", prompts_file)
    store2, refs2, _ = run_round(again, tiny_policy, upto="generate")
    assert store2.read_rows(refs2["generate"]) == rows


def test_generate_resumes_after_the_last_finished_shard(tmp_path, prompts_file, tiny_policy, monkeypatch):
    cfg = make_config(tmp_path, prompts_file)
    store = Store(cfg.store.root)
    jobs = round_plan(cfg.model_copy(update={"stop_after": "generate"}), 1, external_model(tiny_policy), Baseline()).jobs()
    launch(jobs[0], store)
    calls = []
    real = generate.load_engine

    class Flaky:
        def __init__(self, engine):
            self.engine = engine

        def generate(self, prompts, params):
            calls.append(len(prompts))
            if len(calls) == 3:
                raise ConnectionError("worker lost")
            return self.engine.generate(prompts, params)

    monkeypatch.setattr(generate, "load_engine", lambda *a, **kw: Flaky(real(*a, **kw)))
    with pytest.raises(TransientError, match="ConnectionError"):
        launch(jobs[1], store)
    assert sorted(p.name for p in (tmp_path / "store/.partial" / jobs[1].ref.id / "data").iterdir()) == [
        "train-00000.parquet", "train-00001.parquet"]
    calls.clear()
    launch(jobs[1], store)
    assert calls == [4]  # only the third shard was generated again
    assert store.manifest(jobs[1].ref)["rows"] == 12


def test_score_marks_failing_rows_invalid_and_counts_them(tmp_path, prompts_file, tiny_policy):
    (tmp_path / "rules.py").write_text(
        "def flaky(messages, response):\n"
        "    if 'music' in messages[-1]['content']:\n        raise ValueError('no music')\n"
        "    if messages[-1]['content'] == 'Tell me about rain.':\n        return float('nan')\n"
        "    return len(response)\n"
    )
    cfg = make_config(tmp_path, prompts_file, reward={"function": f"{tmp_path / 'rules.py'}:flaky"},
                      score={"max_invalid_fraction": 0.2})  # 6 of 36 invalid: allowed here
    store, refs, _ = run_round(cfg, tiny_policy, upto="score")
    rows = {r["messages"][-1]["content"]: r for r in store.read_rows(refs["score"])}
    music, rain, cats = rows["Tell me about music."], rows["Tell me about rain."], rows["Tell me about cats."]
    assert all(math.isnan(v) for v in music["rewards"]) and "raised ValueError: no music" in music["invalid_reasons"][0]
    assert rain["invalid_reasons"] == ["reward is nan"] * 3
    assert cats["rewards"] == [float(len(t)) for t in cats["responses"]] and cats["invalid_reasons"] == [None] * 3
    summary = store.manifest(refs["score"])["summary"]
    assert summary["invalid"] == 6 and summary["responses"] == 36


def test_score_stops_with_the_reason_when_every_reward_fails(tmp_path, prompts_file, tiny_policy):
    """A reward failing on a whole shard stops the stage at that shard and keeps nothing of it, so the same
    config scores it once the reward works again (a service back up, a file restored)."""
    flag = tmp_path / "down"
    (tmp_path / "rules.py").write_text(
        "from pathlib import Path\n"
        "def sometimes(messages, response):\n"
        f"    if Path({str(flag)!r}).exists():\n"
        "        return {}['key']\n"
        "    return float(len(response))\n"
    )
    cfg = make_config(tmp_path, prompts_file, reward={"function": f"{tmp_path / 'rules.py'}:sometimes"})
    flag.touch()
    with pytest.raises(DataError, match=r"the reward failed for all 12\. Most common reason \(12×\): .*raised KeyError"):
        run_round(cfg, tiny_policy, upto="score")
    flag.unlink()
    store, refs, _ = run_round(cfg, tiny_policy, upto="score")
    assert store.manifest(refs["score"])["summary"]["invalid"] == 0


def test_classifier_reward_is_batch_size_invariant(tmp_path, prompts_file, tiny_policy, tiny_classifier):
    values = []
    for bs in (1, 5):
        cfg = make_config(tmp_path / f"b{bs}", prompts_file,
                          reward={"backend": "classifier", "function": None, "model": tiny_classifier, "batch_size": bs})
        store, refs, _ = run_round(cfg, tiny_policy, upto="score")
        values.append([v for r in store.read_rows(refs["score"]) for v in r["rewards"]])
    assert all(math.isfinite(v) for v in values[0]) and len(set(values[0])) > 10
    assert values[0] == pytest.approx(values[1], abs=1e-5)


def test_prepare_pairs_best_against_worst_with_reply_masks(tmp_path, prompts_file, tiny_policy):
    from transformers import AutoTokenizer

    cfg = make_config(tmp_path, prompts_file)
    store, refs, _ = run_round(cfg, tiny_policy)
    scored = {r["prompt_id"]: r for r in store.read_rows(refs["score"])}
    train, val = store.read_rows(refs["prepare"]), store.read_rows(refs["prepare"], "validation")
    assert len(val) == 2 and not {p["prompt_id"] for p in train} & {p["prompt_id"] for p in val}
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    for p in train + val:
        rewards = scored[p["prompt_id"]]["rewards"]
        assert p["chosen_reward"] == max(rewards) and p["rejected_reward"] == min(rewards)
        for side in ("chosen", "rejected"):
            ids, mask = p[f"{side}_ids"], p[f"{side}_mask"]
            assert len(ids) == len(mask) and mask[: p["prompt_tokens"]] == [0] * p["prompt_tokens"]
            assert tok.decode([t for t, m in zip(ids, mask, strict=True) if m]) == p[f"{side}_text"] + "<|im_end|>"
    summary = store.manifest(refs["prepare"])["summary"]
    assert summary["pairs"] + sum(summary["filters"].values()) == 12


def test_prepare_filters_are_counted_per_reason():
    from rebelflow.ml.tiny import build_tokenizer

    tok = build_tokenizer(600)
    s = prepare.Settings(max_prompt_tokens=64, max_response_tokens=8, require_eot=True, validation_pairs=0)
    base = {"prompt_id": "x", "messages": [{"role": "user", "content": "Hi"}], "finish_reasons": ["stop"] * 3}
    cases = {
        "invalid reward": {"responses": ["a", "b", "c"], "rewards": [1.0, math.nan, math.nan]},
        "identical pair": {"responses": ["same", "same ", "x"], "rewards": [2.0, 0.0, 1.0]},
        "no end-of-turn": {"responses": ["a", "b", "c"], "rewards": [2.0, 0.0, 1.0],
                           "finish_reasons": ["length", "stop", "stop"]},
        "response too long": {"responses": ["a " * 30, "b", "c"], "rewards": [2.0, 0.0, 1.0]},
    }
    for reason, row in cases.items():
        assert prepare.make_pair(s, tok, {**base, **row}) == (None, reason)
    long_prompt = {**base, "messages": [{"role": "user", "content": "word " * 100}],
                   "responses": ["a", "b", "c"], "rewards": [2.0, 0.0, 1.0]}
    assert prepare.make_pair(s, tok, long_prompt) == (None, "prompt too long")
    pair, reason = prepare.make_pair(s, tok, {**base, "responses": ["a", "b", "c"], "rewards": [0.5, 0.5, 0.5]})
    assert reason is None and pair["chosen_text"] != pair["rejected_text"]  # equal rewards still pair two samples


def test_prepare_says_what_to_change_when_too_few_pairs_survive(tmp_path, prompts_file, tiny_policy):
    cfg = make_config(tmp_path, prompts_file, prepare={"max_response_tokens": 1})
    with pytest.raises(DataError, match=r"0 of 12 prompts gave a pair .*'response too long': 12.*Raise prepare.max_response_tokens \(1\).*lower prepare.validation_pairs"):
        run_round(cfg, tiny_policy)


def test_stage_runs_alone_from_the_command_line(tmp_path, prompts_file, tiny_policy, capsys):
    """`python -m rebelflow.stages.generate CONFIG --round 1` with evaluation on makes round 1's generate
    artifact (the plan's), never the baseline's round-0 eval_generate, which the same module also runs."""
    import subprocess
    import sys

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"campaign: c\npolicy: {{model: {tiny_policy}}}\nprompts: {{source: {prompts_file}, id_column: id}}\n"
        f"reward: {{backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}}\n"
        f"generate: {{n: 2, max_new_tokens: 4}}\nprepare: {{validation_pairs: 1}}\n"
        f"evaluate: {{prompts: {{source: {prompts_file}, id_column: id, per_round: 2}}, max_new_tokens: 4}}\n"
        f"store: {{root: {tmp_path / 's'}}}\n"
    )
    cfg = load_config(cfg_file)
    jobs = {(j.name, j.round): j.ref for j in campaign_jobs(cfg)}
    assert stage_cli.main("generate", [str(cfg_file)]) == 3
    assert "are not in" in capsys.readouterr().err
    assert stage_cli.main("prompts", [str(cfg_file)]) == 0
    cmd = [sys.executable, "-m", "rebelflow.stages.generate", str(cfg_file), "--round", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"generate round 1: {Store(tmp_path / 's').path(jobs['generate', 1])}" in done.stdout
    made = sorted(p.name for p in (tmp_path / "s/artifacts").glob("generate-*"))
    assert made == [jobs["generate", 1].id]  # not the baseline's eval_generate
    # the baseline's samples: the same module, picked by step name and round 0
    assert stage_cli.main("prompts", [str(cfg_file), "--step", "eval_prompts", "--round", "0"]) == 0
    assert stage_cli.main("generate", [str(cfg_file), "--step", "eval_generate", "--round", "0"]) == 0
    assert "eval_generate round 0:" in capsys.readouterr().out
    assert Store(tmp_path / "s").is_complete(jobs["eval_generate", 0])
    assert stage_cli.main("generate", [str(cfg_file), "--round", "0"]) == 3  # round 0 has no generate step
    assert "no generate step of the generate stage in round 0" in capsys.readouterr().err


def test_a_round_zero_stage_defaults_to_round_zero():
    from rebelflow.planning.jobs import StageJob
    from rebelflow.running.stage_cli import default_step, pick_job
    from rebelflow.store.refs import ArtifactRef

    def job(stage, name, k):
        return StageJob(stage=stage, name=name, round=k, settings={}, inputs=[],
                        ref=ArtifactRef(id=f"{name}-{k}", stage=stage))

    jobs = [job("tiny_model", "tiny_model", 0), job("generate", "eval_generate", 0), job("generate", "generate", 1),
            job("generate", "eval_generate", 1), job("generate", "generate", 2)]
    assert pick_job(jobs, "tiny_model", "tiny_model", None).round == 0
    assert pick_job(jobs, "generate", "generate", None).ref.id == "generate-1"
    assert pick_job(jobs, "generate", "generate", 2).ref.id == "generate-2"
    assert pick_job(jobs, "generate", "eval_generate", 1).ref.id == "eval_generate-1"
    assert default_step("generate_dialogues") == "generate" and default_step("rm_train") == "rm_train"
    with pytest.raises(DataError, match=r"no generate step .* round 3.*eval_generate \(round 0\)"):
        pick_job(jobs, "generate", "generate", 3)


def test_two_processes_making_the_same_artifact_make_it_once(tmp_path, prompts_file, tiny_policy):
    import subprocess
    import sys

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"campaign: c\npolicy: {{model: {tiny_policy}}}\nprompts: {{source: {prompts_file}, id_column: id}}\n"
        f"reward: {{backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}}\n"
        f"generate: {{n: 2, max_new_tokens: 8}}\nprepare: {{validation_pairs: 1}}\nstop_after: prepare\nstore: {{root: {tmp_path / 's'}}}\n"
    )
    assert stage_cli.main("prompts", [str(cfg_file)]) == 0
    cmd = [sys.executable, "-m", "rebelflow.stages.generate", str(cfg_file)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    made = list((tmp_path / "s/artifacts").glob("generate-*"))
    assert len(made) == 1 and (made[0] / "manifest.json").is_file()
    assert not (tmp_path / "s/quarantine").exists()
    assert sum("generate ×2: 100%" in out for out in outputs) == 1  # the second found it complete


def test_score_shared_over_two_ranks_equals_one_process(tmp_path, prompts_file, tiny_policy, tiny_classifier):
    """score under a 2-process `accelerate launch` (gloo here, one GPU each on a GPU machine): every rank
    loads the classifier and scores its share; the main process writes the same rewards in the same order."""
    import shutil

    from rebelflow.config.campaign import LauncherConfig

    cfg = make_config(tmp_path, prompts_file, score={"shard_size": 5},
                      reward={"backend": "classifier", "function": None, "model": tiny_classifier, "batch_size": 2})
    store, refs, _ = run_round(cfg, tiny_policy, upto="score")
    one = [(r["prompt_id"], r["rewards"]) for r in store.read_rows(refs["score"])]
    shutil.move(store.path(refs["score"]), tmp_path / "one-process")
    job = next(j for j in round_plan(cfg.model_copy(update={"stop_after": "score"}), 1, external_model(tiny_policy),
                                     Baseline()).jobs() if j.name == "score")
    job = job.model_copy(update={"launcher": LauncherConfig(kind="accelerate", num_processes=2)})
    assert launch(job, store) == refs["score"]
    two = [(r["prompt_id"], r["rewards"]) for r in store.read_rows(refs["score"])]
    assert [p for p, _ in two] == [p for p, _ in one]
    for (_, a), (_, b) in zip(one, two, strict=True):
        assert b == pytest.approx(a, abs=1e-5)
    assert store.manifest(refs["score"])["summary"]["processes"] == 2


def test_a_reward_failing_for_part_of_the_responses_stops_above_the_limit(tmp_path, prompts_file, tiny_policy):
    """A rule that raises for half the topics (two of every shard of four): 50 % invalid is a bug, not noise."""
    (tmp_path / "rules.py").write_text(
        "def half(messages, response):\n"
        "    if messages[-1]['content'].split()[-1].rstrip('.') in {'cats', 'music', 'trains', 'tea', 'boats', 'honey'}:\n"
        "        raise ValueError('cannot parse')\n"
        "    return 1.0\n"
    )
    reward = {"function": f"{tmp_path / 'rules.py'}:half"}
    cfg = make_config(tmp_path / "a", prompts_file, reward=reward)
    with pytest.raises(DataError, match=r"the reward failed for \d+ of \d+ .*above score.max_invalid_fraction \(0.1\)"
                                        r".*Most common reason .*ValueError.*\(e.g. prompt p\d+ response \d\)"):
        run_round(cfg, tiny_policy, upto="score")
    cfg = make_config(tmp_path / "b", prompts_file, reward=reward, score={"max_invalid_fraction": 0.9})
    store, refs, _ = run_round(cfg, tiny_policy, upto="score")
    assert 0 < store.manifest(refs["score"])["summary"]["invalid"] < 36
