"""The campaign flow under Prefect: caching by fingerprint, partial re-runs, corruption, bad input."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rebelflow.cli import app
from rebelflow.config.errors import DataError
from rebelflow.flows.campaign import campaign_flow
from rebelflow.ops.history import read_history
from rebelflow.planning.campaign import campaign_jobs
from rebelflow.store.local import Store
from tests.conftest import make_config, write_prompts

ROUND0 = [(0, "tiny_model"), (0, "eval_prompts"), (0, "eval_generate"), (0, "eval_score")]
ROUND1 = [(1, s) for s in ("prompts", "generate", "score", "prepare", "logprobs", "train", "eval_generate",
                           "eval_score", "evaluate")]


def statuses(result):
    return {(r["round"], r["stage"]): r["status"] for r in result["records"]}


def ran(result):
    return sorted(key for key, status in statuses(result).items() if status == "ran")


@pytest.fixture
def cfg(tmp_path, prompts_file):
    return make_config(tmp_path, prompts_file)


def test_second_run_is_fully_cached(cfg):
    first = campaign_flow(cfg)
    assert list(statuses(first)) == ROUND0 + ROUND1 and set(statuses(first).values()) == {"ran"}
    second = campaign_flow(cfg)
    assert set(statuses(second).values()) == {"cached"}
    assert [r["id"] for r in first["records"]] == [r["id"] for r in second["records"]]
    index = json.loads((Path(cfg.store.root) / "campaigns/test/index.json").read_text())
    assert index["rounds"]["1"]["evaluate"]["id"] == first["records"][-1]["id"]
    summary = json.loads((Path(cfg.store.root) / "campaigns/test/summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and summary["rounds"][0]["win_rate"] == 0.5
    assert (Path(cfg.store.root) / "campaigns/test/summary.png").stat().st_size > 1000


def test_cached_runs_still_publish_stage_summaries(tmp_path, prompts_file):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    cfg = make_config(tmp_path, prompts_file, campaign="ui-test")
    campaign_flow(cfg)
    campaign_flow(cfg)
    with get_client(sync_client=True) as client:
        prepare = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ui-test-r1-prepare"])))
        samples = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ui-test-r1-score-sample"])))
        summary = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ui-test-summary"])))
    assert len(prepare) == len(samples) == len(summary) == 2  # one per run, the cached one included
    assert "#### filters" in prepare[0].data and "| response too long |" in prepare[0].data
    assert "reward" in json.loads(samples[0].data)[0]


def test_changing_a_prepare_setting_reruns_prepare_only(cfg, tmp_path, prompts_file):
    campaign_flow(cfg)
    changed = make_config(tmp_path, prompts_file, prepare={"max_response_tokens": 60})
    assert ran(campaign_flow(changed)) == sorted(ROUND1[3:])  # prepare and everything after it


def test_deleting_an_artifact_reruns_it_and_what_follows(cfg):
    result = campaign_flow(cfg)
    generate_id = next(r["id"] for r in result["records"] if (r["round"], r["stage"]) == (1, "generate"))
    shutil.rmtree(f"{cfg.store.root}/artifacts/{generate_id}")
    assert ran(campaign_flow(cfg)) == sorted(ROUND1[1:])


def test_a_corrupted_parquet_shard_is_detected_and_remade(cfg, caplog):
    result = campaign_flow(cfg)
    score_id = next(r["id"] for r in result["records"] if (r["round"], r["stage"]) == (1, "score"))
    shard = next((Path(cfg.store.root) / "artifacts" / score_id / "data").glob("*.parquet"))
    shard.write_bytes(b"not parquet" + shard.read_bytes()[11:])
    assert ran(campaign_flow(cfg)) == sorted(ROUND1[2:])
    assert f"artifact {score_id} is unusable" in caplog.text and "sha256" in caplog.text


def test_changing_eta_reruns_training_evaluation_and_later_rounds_only(tmp_path, prompts_file):
    cfg = make_config(tmp_path, prompts_file, rounds=2)
    first = campaign_flow(cfg)
    assert len(first["records"]) == 4 + 9 + 9
    changed = campaign_flow(make_config(tmp_path, prompts_file, rounds=2, train={"eta": 3.0}))
    round2 = [(2, stage) for _, stage in ROUND1[1:]]  # a new policy: all but the shared prompts
    assert ran(changed) == sorted([*ROUND1[5:], *round2])
    assert statuses(changed)[(2, "prompts")] == "cached"


def test_a_stage_in_a_subprocess(tmp_path, prompts_file):
    cfg = make_config(tmp_path, prompts_file, generate={"launcher": {"kind": "subprocess"}})
    result = campaign_flow(cfg)
    gen = next(r for r in result["records"] if (r["round"], r["stage"]) == (1, "generate"))
    log = (tmp_path / "store/logs" / f"{gen['id']}.log").read_text()
    assert "generate round 1:" in log


def test_a_new_prefect_home_finds_the_stages_in_the_store_without_launching_them(tmp_path, prompts_file):
    """Prefect's result cache lost (a new PREFECT_HOME, machine or worker): every stage is still found in the
    store, reported cached, and no stage process is launched (its log keeps one attempt)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    cfg = make_config(tmp_path, prompts_file, generate={"launcher": {"kind": "subprocess"}}, stop_after="prepare")
    first = campaign_flow(cfg)
    shutil.rmtree(PREFECT_LOCAL_STORAGE_PATH.value(), ignore_errors=True)
    second = campaign_flow(cfg)
    assert set(statuses(second).values()) == {"cached"}
    gen = next(r for r in first["records"] if (r["round"], r["stage"]) == (1, "generate"))
    assert (tmp_path / "store/logs" / f"{gen['id']}.log").read_text().count("===== attempt started") == 1


def test_a_broken_reward_fails_the_flow_with_a_data_error_and_keeps_earlier_stages(tmp_path, prompts_file):
    (tmp_path / "rules.py").write_text("def broken(messages, response):\n    raise RuntimeError('bad rule')\n")
    cfg = make_config(tmp_path, prompts_file, reward={"function": f"{tmp_path / 'rules.py'}:broken"})
    with pytest.raises(DataError, match="bad rule"):
        campaign_flow(cfg)
    index = json.loads((tmp_path / "store/campaigns/test/index.json").read_text())
    # the baseline's evaluation is scored first (round 0), so the broken reward stops the campaign there
    assert index["rounds"]["0"]["eval_generate"]["state"] == "completed"
    assert index["rounds"]["0"]["eval_score"]["state"] == "failed"


def test_cli_run_plan_and_history(tmp_path, prompts_file):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"campaign: cli-test\nprompts: {{source: {prompts_file}, id_column: id}}\n"
        "policy: {tiny: {vocab_size: 600, hidden_size: 32, heads: 2}}\n"
        "reward: {backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}\n"
        "generate: {n: 2, max_new_tokens: 6}\nprepare: {validation_pairs: 1}\nstop_after: prepare\n"
    )
    store = str(tmp_path / "store")
    runner = CliRunner()
    before = json.loads(runner.invoke(app, ["plan", str(cfg_file), "--store", store, "--json"]).output)
    assert {r["status"] for r in before} == {"pending"}
    result = runner.invoke(app, ["run", str(cfg_file), "--store", store])
    assert result.exit_code == 0, result.output
    after = json.loads(runner.invoke(app, ["plan", str(cfg_file), "--store", store, "--json"]).output)
    assert [r["status"] for r in after] == ["cached"] * 5
    assert [(r["round"], r["stage"]) for r in after] == [(0, "tiny_model"), (1, "prompts"), (1, "generate"),
                                                         (1, "score"), (1, "prepare")]
    assert [r["fingerprint"] for r in after] == [r["fingerprint"] for r in before]
    runs = read_history(50)
    assert any(r["name"] == "cli-test" and r["flow"] == "campaign" and r["state"] == "Completed" for r in runs)
    round_run = next(r for r in runs if r["name"] == "cli-test-round-1")
    assert [t["name"] for t in round_run["tasks"]] == ["prompts-r1", "generate-r1", "score-r1", "prepare-r1"]
    shown = runner.invoke(app, ["show", after[-1]["fingerprint"][:12], "--store", store, "--rows", "1"])
    assert shown.exit_code == 0 and "verified: yes" in shown.output and "chosen_ids" in shown.output
    assert "│ train pairs" in shown.output  # the summary as a table of keys and values


def test_cli_rejects_an_empty_prompts_file_before_any_stage(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"campaign: bad\nprompts: {{source: {empty}}}\n"
                        "reward: {backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}\n"
                        "policy: {tiny: {vocab_size: 600, hidden_size: 32, heads: 2}}\nstop_after: prepare\n")
    result = CliRunner().invoke(app, ["run", str(cfg_file), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "input error: prompts file" in result.output and "is empty" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "s").exists()


def test_cli_reports_a_failing_stage_in_one_message(tmp_path, prompts_file):
    (tmp_path / "rules.py").write_text("def broken(messages, response):\n    raise RuntimeError('bad rule')\n")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"campaign: bad\nprompts: {{source: {prompts_file}}}\n"
                        "reward: {backend: rule, function: rules.py:broken}\n"
                        "generate: {n: 2, max_new_tokens: 4}\nprepare: {validation_pairs: 1}\nstop_after: prepare\n"
                        "policy: {tiny: {vocab_size: 600, hidden_size: 32, heads: 2}}\n")
    # a real console (Prefect's handlers write to the process's stderr, which CliRunner does not capture)
    done = subprocess.run([sys.executable, "-m", "rebelflow.cli", "run", str(cfg_file), "--store", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "DataError: score round 1: the reward failed for all 24." in output
    assert "run the same command again" in output
    assert "Traceback" not in output and output.count("bad rule") == 1  # one message, no traceback


def test_a_multi_turn_campaign_end_to_end(tmp_path):

    sums = write_prompts(tmp_path / "sums.jsonl", [{"id": f"s{i}", "prompt": f"What is {i % 10} + {i // 3}?"}
                                                   for i in range(12)])
    user = {"kind": "scripted", "function": "rebelflow.users.examples:addition_quiz"}
    cfg = make_config(tmp_path, sums, campaign="multi", dialogue={"turns": 2, "user": user},
                      reward={"function": "rebelflow.rewards.examples:addition_dialogue"})
    first = campaign_flow(cfg)
    stages_run = [r["id"].rsplit("-", 1)[0] for r in first["records"] if r["round"] == 1]
    assert stages_run == ["prompts", "generate_dialogues", "score_dialogues", "prepare_dialogues", "logprobs",
                          "train", "generate_dialogues", "score_dialogues", "evaluate_dialogues"]
    summary = json.loads((Path(cfg.store.root) / "campaigns/multi/summary.json").read_text())
    assert [len(r["win_rate_by_turn"]) for r in summary["rounds"]] == [2, 2]
    assert summary["rounds"][0]["win_rate_by_turn"] == [0.5, 0.5]
    assert set(statuses(campaign_flow(cfg)).values()) == {"cached"}


def test_a_dataset_user_campaign_from_hh_transcripts(tmp_path):
    """REFUEL setting two end to end: prompts and user turns from one HH column, dialogues of the data's own
    lengths compared at their last turn, per-turn win rates over the turns each dialogue has."""

    def transcript(i: int) -> str:
        turns = 1 + i % 3
        return "".join(f"\n\nHuman: Tell me about topic {i}, part {j}.\n\nAssistant: Sure." for j in range(turns))

    hh = write_prompts(tmp_path / "hh.jsonl", [{"id": f"d{i}", "chosen": transcript(i)} for i in range(12)])
    columns = {"source": str(hh), "id_column": "id", "prompt_column": None, "messages_column": "chosen",
               "first_turn_only": True}
    cfg = make_config(tmp_path, hh, campaign="hh", prompts=columns, evaluate={"prompts": {**columns, "per_round": 6}},
                      dialogue={"turns": 3, "horizon": "last", "user": {"kind": "dataset", "turns_column": "chosen"}})
    records = campaign_flow(cfg)["records"]
    store = Store(cfg.store.root)
    ref = next(r for r in records if r["round"] == 1 and r["id"].startswith("generate_dialogues"))
    rows = {r["prompt_id"]: r for r in store.read_rows(store.find(ref["id"]))}
    for i in range(12):
        r = rows[f"d{i}"]
        users = [m["content"] for m in r["rollout1"] if m["role"] == "user"]
        assert users == [f"Tell me about topic {i}, part {j}." for j in range(1 + i % 3)] and r["invalid_reason"] is None
        assert r["horizon"] == i % 3
    assert store.manifest(store.find(ref["id"]))["summary"]["mean replies in rollout 1"] == 2.0
    summary = json.loads((Path(cfg.store.root) / "campaigns/hh/summary.json").read_text())
    assert len(summary["rounds"][1]["win_rate_by_turn"]) == 3


def test_wandb_offline_tracking_logs_training_updates_and_round_evaluation(tmp_path, prompts_file):
    """tracking.wandb (offline) gives one wandb run per stage that ran, grouped by campaign: training stages
    log a point per update, the others their summary (evaluate: rewards and win rate); fingerprints do
    not change."""
    plain = make_config(tmp_path / "a", prompts_file, campaign="tracked")
    cfg = make_config(tmp_path / "b", prompts_file, campaign="tracked",
                      tracking={"wandb": {"project": "rebelflow-test", "mode": "offline"}})
    assert [j.ref.id for j in campaign_jobs(cfg)] == [j.ref.id for j in campaign_jobs(plain)]
    campaign_flow(cfg)
    blobs = [p.read_bytes() for p in (Path(cfg.store.root) / "wandb" / "wandb").glob("offline-run-*/run-*.wandb")]
    runs = {}  # the offline logs hold each run's name, project and metric keys as plain bytes
    for name in ("tracked-r1-train", "tracked-r1-evaluate", "tracked-r1-generate", "tracked-r0-eval_score"):
        found = [blob for blob in blobs if name.encode() in blob]
        assert len(found) == 1, name
        runs[name] = found[0]
    assert len(blobs) == 13  # one per stage that ran: 4 of round 0, 9 of round 1
    assert b"val_loss" in runs["tracked-r1-train"] and b"tokens_per_second" in runs["tracked-r1-train"]
    assert b"win_rate" in runs["tracked-r1-evaluate"]
    assert all(b"rebelflow-test" in blob for blob in blobs)


def test_online_rounds_show_their_iteration_curves_in_plan_history_and_the_summary(tmp_path, prompts_file):
    """An online round's per-iteration curves (score, KL, no-end rate, validation) reach `plan`, `history`,
    the campaign's summary.json and online.png (which the UI's campaign page inlines)."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"campaign: online-curves\nprompts: {{source: {prompts_file}, id_column: id}}\nrounds: 2\n"
        "policy: {tiny: {vocab_size: 600, hidden_size: 32, heads: 2}}\n"
        "reward: {backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}\n"
        "generate: {max_new_tokens: 6}\ntrain: {launcher: {kind: inprocess}}\n"
        "online: {iterations: 3, prompts_per_iteration: 4, minibatch_pairs: 2, validate_every: 2, validation_prompts: 2}\n"
        f"evaluate: {{prompts: {{source: {prompts_file}, id_column: id, per_round: 4}}, n: 2, max_new_tokens: 6}}\n"
    )
    store = str(tmp_path / "store")
    runner = CliRunner()
    before = json.loads(runner.invoke(app, ["plan", str(cfg_file), "--store", store, "--json"]).output)
    assert [r["note"] for r in before if r["stage"] == "online"] == ["3 iterations: 4 prompts × 2 samples, 8 updates each"] * 2
    result = runner.invoke(app, ["run", str(cfg_file), "--store", store])
    assert result.exit_code == 0, result.output
    assert "online iterations: online.png" in result.output
    after = json.loads(runner.invoke(app, ["plan", str(cfg_file), "--store", store, "--json"]).output)
    notes = [r["note"] for r in after if r["stage"] == "online"]
    assert len(notes) == 2 and all(n.startswith("3 iterations: score ") and " KL " in n and " val " in n for n in notes)
    summary = json.loads((Path(store) / "campaigns/online-curves/summary.json").read_text())
    assert [(r["round"], r["iteration"], r["step"]) for r in summary["online"]] == [
        (1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 1, 4), (2, 2, 5), (2, 3, 6)]
    assert all(r.get("val_score") is not None for r in summary["online"] if r["iteration"] in (2, 3))
    assert (Path(store) / "campaigns/online-curves/online.png").stat().st_size > 1000
    rounds = {r["name"]: r for r in read_history(50)}
    online = next(t for t in rounds["online-curves-round-2"]["tasks"] if t["name"] == "online-r2")
    assert online["curve"] == notes[1]


def test_cli_prints_the_final_policy_which_exports_and_the_round_samples(tmp_path, prompts_file):
    """`run` ends with the final policy's folder and the export command; `export` writes a plain HF folder that
    transformers loads (card with lineage), refuses a dataset artifact and a non-empty folder; `samples`
    shows every evaluation sample of the round's policy beside the baseline's, with rewards; a judge's win
    rate reaches the round table."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "judge.py").write_text("def longer(a, b):\n    la, lb = len(a[-1]['content']), len(b[-1]['content'])\n"
                                       "    return '[[A]]' if la > lb else '[[B]]' if lb > la else '[[C]]'\n")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"campaign: out-test\nprompts: {{source: {prompts_file}, id_column: id}}\n"
        "policy: {tiny: {vocab_size: 600, hidden_size: 32, heads: 2}}\n"
        "reward: {backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}\n"
        "generate: {n: 2, max_new_tokens: 6}\nprepare: {validation_pairs: 1}\n"
        "train: {pairs_per_update: 4, micro_batch_pairs: 2, launcher: {kind: inprocess}}\n"
        f"evaluate: {{prompts: {{source: {prompts_file}, id_column: id, per_round: 3}}, n: 2, max_new_tokens: 6, "
        f"judge: {{kind: callable, function: '{tmp_path / 'judge.py'}:longer'}}}}\n"
    )
    store, runner = str(tmp_path / "store"), CliRunner()
    result = runner.invoke(app, ["run", str(cfg_file), "--store", store])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    policy = re.search(r"rebelflow export (train-[0-9a-f]+) DIR", text).group(1)
    assert f"Final policy: {store}/artifacts/{policy}/model" in text, text[-1500:]
    summary = json.loads((Path(store) / "campaigns/out-test/summary.json").read_text())
    assert "judge" in text and 0 <= summary["rounds"][1]["judge_win_rate"] <= 1  # the round table's judge column

    out = tmp_path / "exported"
    done = runner.invoke(app, ["export", policy[:10], str(out), "--store", store])
    assert done.exit_code == 0, done.output
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers >= 1
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert "## Lineage (rebelflow)" in (out / "README.md").read_text()
    assert json.loads((out / "rebelflow.json").read_text())["id"] == policy
    again = runner.invoke(app, ["export", policy, str(out), "--store", store])
    assert again.exit_code == 2 and "not empty" in again.output
    evaluated = next(p for p in (Path(store) / "artifacts").iterdir() if p.name.startswith("evaluate-"))
    dataset = runner.invoke(app, ["export", evaluated.name, str(tmp_path / "x"), "--store", store])
    assert dataset.exit_code == 2 and "is a dataset artifact" in dataset.output

    shown = runner.invoke(app, ["samples", "out-test", "--round", "1", "--store", store, "--json"])
    rows = json.loads(shown.output)
    assert len(rows) == 3 and all(len(r["policy"]) == len(r["baseline"]) == 2 for r in rows)
    assert all(isinstance(s["reward"], float) for r in rows for s in r["policy"] + r["baseline"])
    table = runner.invoke(app, ["samples", "out-test", "--store", store, "--limit", "1"])
    assert table.exit_code == 0 and "round 1 policy" in table.output and "… 2 more prompts" in table.output
    missing = runner.invoke(app, ["samples", "out-test", "--round", "4", "--store", store])
    assert missing.exit_code == 2 and "rounds with them: [1]" in " ".join(missing.output.split())


def test_a_mistuned_campaign_says_what_looks_wrong_and_what_to_try(tmp_path):
    """Replies cut at 2 tokens (so the reward tells no pair apart) and a prompt limit two thirds of the prompts
    exceed: the round's entry in summary.json says all three, with the numbers and the settings to change, and
    `run` prints them after the round table."""
    long = ", and then tell me about the rain, the music, the bread and the trains in the snow"
    topics = ["apples", "lakes", "clocks", "roses", "ships", "hills", "dogs", "wind", "owls", "maps", "cake", "songs"]
    prompts_file = write_prompts(tmp_path / "prompts.jsonl", [  # short prompts about 20 tokens, long ones about 46
        {"id": f"p{i}", "prompt": f"Tell me about {t}{'' if i % 3 == 0 else long}."} for i, t in enumerate(topics * 2)])
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"campaign: mistuned\nprompts: {{source: {prompts_file}, id_column: id}}\n"
        "policy: {tiny: {vocab_size: 600, hidden_size: 32, heads: 2}}\n"
        "reward: {backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}\n"
        "generate: {n: 3, max_new_tokens: 2}\nprepare: {validation_pairs: 2, max_prompt_tokens: 30}\n"
        "train: {eta: 1.0e-5, pairs_per_update: 2, micro_batch_pairs: 2, launcher: {kind: inprocess}}\n"
        f"evaluate: {{prompts: {{source: {prompts_file}, id_column: id, per_round: 3}}, max_new_tokens: 2}}\n"
    )
    store = str(tmp_path / "store")
    result = CliRunner().invoke(app, ["run", str(cfg_file), "--store", store])
    assert result.exit_code == 0, result.output
    summary = json.loads((Path(store) / "campaigns/mistuned/summary.json").read_text())
    found = summary["rounds"][1]["diagnostics"]
    assert any("mean reward gap of the pairs is 0.0" in d and "never tells a pair's two responses apart" in d
               for d in found), found
    assert any("ended with end-of-turn: most hit generate.max_new_tokens" in d for d in found), found
    assert any("'prompt too long' filter dropped 16 of 24 prompts. Raise prepare.max_prompt_tokens (30)" in d
               for d in found), found
    assert "round 1:" in result.output and "never tells a pair's two responses apart" in " ".join(result.output.split())


def test_a_variant_keeps_its_own_summary_and_compare_shows_it_beside_the_campaign(tmp_path, prompts_file):
    """`--set train.eta=3` makes a variant: named after its override, its own index and summary (the
    campaign's stays as it was), round 1's generation reused; `compare` lists both runs with their labels,
    reward-model and judge win rates, and writes the plot; the Prefect history records the override."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"campaign: cmp\nprompts: {{source: {prompts_file}, id_column: id}}\n"
        "policy: {tiny: {vocab_size: 600, hidden_size: 32, heads: 2}}\n"
        "reward: {backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}\n"
        "generate: {n: 2, max_new_tokens: 6}\nprepare: {validation_pairs: 1}\n"
        "train: {pairs_per_update: 4, micro_batch_pairs: 2, launcher: {kind: inprocess}}\n"
        f"evaluate: {{prompts: {{source: {prompts_file}, id_column: id, per_round: 3}}, n: 2, max_new_tokens: 6, "
        "judge: {kind: callable, function: 'rebelflow.judges.examples:stand_in'}}\n"
    )
    store, runner = tmp_path / "store", CliRunner()
    assert runner.invoke(app, ["run", str(cfg_file), "--store", str(store)]).exit_code == 0
    base_summary = (store / "campaigns/cmp/summary.json").read_bytes()
    variant = runner.invoke(app, ["run", str(cfg_file), "--store", str(store), "--set", "train.eta=3",
                                  "--set", "rounds=1"])  # rounds: the same run, not part of the label
    assert variant.exit_code == 0, variant.output
    assert "campaign cmp--train.eta-3 (variant of cmp: train.eta=3)" in " ".join(variant.output.split())
    assert (store / "campaigns/cmp/summary.json").read_bytes() == base_summary
    mine = json.loads((store / "campaigns/cmp--train.eta-3/summary.json").read_text())
    assert mine["variant"] == {"of": "cmp", "overrides": ["train.eta=3"]}
    indexes = [json.loads((store / f"campaigns/{c}/index.json").read_text())["rounds"]["1"] for c in ("cmp", "cmp--train.eta-3")]
    assert indexes[0]["generate"]["id"] == indexes[1]["generate"]["id"]  # content-addressed: reused
    assert indexes[0]["train"]["id"] != indexes[1]["train"]["id"]

    shown = runner.invoke(app, ["compare", "cmp", "--store", str(store), "--json"])
    rows = json.loads(shown.output)
    assert [(r["run"], r["round"]) for r in rows] == [("cmp", 0), ("cmp", 1), ("cmp + train.eta=3", 0),
                                                      ("cmp + train.eta=3", 1)]
    assert rows[3]["win_rate"] == mine["rounds"][1]["win_rate"] and 0 <= rows[3]["judge_win_rate"] <= 1
    table = runner.invoke(app, ["compare", "--store", str(store), "--out", str(tmp_path / "c.png")])
    assert table.exit_code == 0 and "cmp + train.eta=3" in table.output, table.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    missing = runner.invoke(app, ["compare", "other", "--store", str(store)])
    assert missing.exit_code == 2 and "campaigns with a summary are ['cmp']" in " ".join(missing.output.split())
    run = next(r for r in read_history(50) if r["name"] == "cmp--train.eta-3" and r["flow"] == "campaign")
    assert run["overrides"] == ["train.eta=3"]


def test_the_console_shows_one_line_per_stage_and_the_log_file_the_rest(tmp_path, prompts_file):
    """`rebelflow run` as a user starts it: the terminal gets one progress line per stage (with the count and
    the time left) and the tables; Prefect's log lines and wandb's output go to the run's log file; `-v`
    shows them on the terminal as well."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"campaign: quiet\nprompts: {{source: {prompts_file}, id_column: id}}\n"
        "policy: {tiny: {vocab_size: 600, hidden_size: 32, heads: 2}}\n"
        "reward: {backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}\n"
        "generate: {n: 2, max_new_tokens: 6}\nprepare: {validation_pairs: 1}\nstop_after: prepare\n"
        "tracking: {wandb: {project: quiet-test, mode: offline}}\n"
    )
    cli = [sys.executable, "-c", "from rebelflow.cli import main; main()", "run", str(cfg_file)]
    quiet = subprocess.run([*cli, "--store", str(tmp_path / "a")], capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    shown = (quiet.stdout + quiet.stderr).splitlines()
    steps = [line for line in shown if line.startswith("round ")]
    assert [line.split()[3] for line in steps] == ["tiny_model", "prompts", "generate", "score", "prepare"]
    assert all(" ran " in line for line in steps) and "5/5 stages" in steps[-1] and "left" in steps[0]
    assert not [line for line in shown if line.startswith("wandb:") or "| INFO" in line], shown
    assert len(shown) < 40, shown
    log = next((tmp_path / "a" / "logs").glob("run-quiet-*.log")).read_text()
    assert "Finished in state Completed()" in log and "wandb: " in log
    verbose = subprocess.run([*cli, "--store", str(tmp_path / "b"), "-v"], capture_output=True, text=True, timeout=600)
    assert verbose.returncode == 0 and "Finished in state Completed()" in verbose.stdout + verbose.stderr
    assert not list((tmp_path / "b").glob("logs/run-*.log"))
