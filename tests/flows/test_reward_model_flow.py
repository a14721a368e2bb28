"""The reward-model flow end to end through the CLI (rm-train, rm-eval) on the shipped demo, and a campaign
that scores with the reward model it trained."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO, make_config
from tests.stages.helpers import run_round

DEMO = str(REPO / "configs/demo-rm.yaml")


def rebelflow(*args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it (its own process and temporary Prefect server)."""
    return subprocess.run([sys.executable, "-m", "rebelflow.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`rebelflow rm-train configs/demo-rm.yaml` into a fresh store: (store, CLI output, summary.json)."""
    store = tmp_path_factory.mktemp("rm") / "store"
    out = rebelflow("rm-train", DEMO, "--store", str(store))
    assert out.returncode == 0, out.stdout + out.stderr
    return store, out.stdout, json.loads((store / "campaigns/demo-rm/summary.json").read_text())


def test_rm_train_raises_heldout_accuracy_and_scores_sections(trained):
    store, output, summary = trained
    trained_manifest = json.loads((store / "artifacts" / summary["reward_model"] / "manifest.json").read_text())
    before = trained_manifest["summary"]["heldout accuracy before training"]
    assert 0 <= before <= 1 and 0 <= summary["heldout_accuracy"] <= 1
    assert summary["heldout_accuracy"] >= 0.9 and summary["heldout_accuracy"] > before + 0.3  # measured 0.33 -> 1.0
    assert set(summary["sections"]) == {"Chat", "Chat Hard", "Reasoning"} and summary["weighting"] == "demo-sections"
    assert summary["sections"]["Chat"] > 0.9  # learned: the more cheerful reply
    assert summary["overall"] == pytest.approx(sum(summary["sections"].values()) / 3, abs=1e-4)
    assert any("heldout_accuracy" in row for row in summary["curve"])  # the accuracy curve
    assert f"artifact: {summary['reward_model']}" in " ".join(output.split())


def test_rm_eval_reuses_the_trained_model_with_another_weighting(trained, tmp_path):
    store, _, summary = trained
    weights = tmp_path / "w.yaml"
    weights.write_text("name: easy-only\nsections:\n  Chat: {cheer-easy: 1}\n")
    out = rebelflow("rm-eval", DEMO, "--store", str(store), "--set", f"eval.weights={weights}")
    assert out.returncode == 0, out.stdout + out.stderr
    after = json.loads((store / "campaigns/demo-rm/summary.json").read_text())
    assert after["weighting"] == "easy-only" and set(after["sections"]) == {"Chat"}
    assert after["unweighted_subsets"] == ["addition", "cheer-hard", "length-trap"]
    assert after["heldout_accuracy"] == summary["heldout_accuracy"]  # the training results stay
    assert "│ rm_eval " in out.stdout and "│ rm_train " not in out.stdout  # evaluation only


def test_rm_eval_before_rm_train_says_what_to_run(tmp_path):
    out = rebelflow("rm-eval", DEMO, "--store", str(tmp_path / "empty"))
    assert out.returncode == 2 and "rebelflow rm-train CONFIG" in " ".join(out.stderr.split())


def test_a_campaign_scores_with_the_trained_reward_model(trained, tmp_path, prompts_file, tiny_policy):
    from rebelflow.config.campaign import RewardConfig
    from rebelflow.rewards.classifier import ClassifierReward

    store, _, summary = trained
    rm_id = summary["reward_model"]
    cfg = make_config(tmp_path, prompts_file, reward={"backend": "classifier", "function": None,
                                                      "artifact": rm_id[:14]}, store={"root": str(store)})
    assert cfg.reward.model == summary["model_path"]
    campaign_store, refs, _ = run_round(cfg, tiny_policy, upto="score")
    rows = campaign_store.read_rows(refs["score"])
    direct = ClassifierReward(RewardConfig(backend="classifier", model=summary["model_path"]))
    expected = direct.score([(r["messages"], resp) for r in rows for resp in r["responses"]])
    got = [v for r in rows for v in r["rewards"]]
    assert all(math.isfinite(v) for v in got)
    assert got == pytest.approx([e.value for e in expected], abs=1e-5)
    assert campaign_store.manifest(refs["score"])["settings"]["reward"]["artifact"] == rm_id[:14]


def test_reward_artifact_errors_name_the_fix(tmp_path, prompts_file, trained):
    from rebelflow.config.errors import ConfigError

    store, _, summary = trained
    with pytest.raises(ConfigError, match=r"\[reward.artifact\] 'rm_train-nope' matches no artifact.*rm-train"):
        make_config(tmp_path, prompts_file, reward={"backend": "classifier", "function": None, "artifact": "rm_train-nope"},
                    store={"root": str(store)})
    data_id = next((store / "artifacts").glob("preferences-*")).name
    with pytest.raises(ConfigError, match="is a preferences artifact, not a reward model"):
        make_config(tmp_path, prompts_file, reward={"backend": "classifier", "function": None, "artifact": data_id},
                    store={"root": str(store)})


def test_the_ui_gets_section_scores_and_the_accuracy_curve(trained):
    """A re-run in process (every stage cached) publishes the tables the Prefect UI shows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from rebelflow.config.loading import load_config
    from rebelflow.config.reward_model import RMConfig
    from rebelflow.flows.reward_model import reward_model_flow

    store, _, summary = trained
    cfg = load_config(DEMO, store=str(store), root=RMConfig)
    result = reward_model_flow(cfg, "train")
    assert {r["status"] for r in result["records"]} == {"cached"}

    def read(key: str):
        with get_client(sync_client=True) as client:
            return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    sections = json.loads(read("demo-rm-r0-rm-eval-sections")[0].data)
    assert {row["section"] for row in sections} == {"Chat", "Chat Hard", "Reasoning"}
    curve = json.loads(read("demo-rm-r0-rm-train-curve")[0].data)
    assert any(row.get("heldout_accuracy") is not None for row in curve)
    board = read("demo-rm-summary")[0].data
    assert "| heldout_accuracy |" in board and "| Chat Hard |" in board
