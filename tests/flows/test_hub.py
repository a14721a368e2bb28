"""Hub artifacts end to end against a local stand-in of the Hub's HTTP API (HF_ENDPOINT): every artifact
uploaded with its commit recorded, the dataset card's configs load with `datasets`, a missing artifact is
downloaded at its pinned commit instead of being made again, and network errors are retried."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rebelflow.flows.campaign import campaign_flow
from tests.conftest import make_config
from tests.hub_standin import HubStandIn


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as hf_constants

    with HubStandIn() as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        monkeypatch.setenv("HF_TOKEN", "hf_standinTokenSecret42")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        yield standin


def hub_cfg(tmp_path, prompts_file, store: str):
    return make_config(tmp_path, prompts_file, campaign="hubtest", hub={"dataset_repo": "me/rf-data"},
                       store={"root": store})


def test_artifacts_round_trip_through_the_hub(hub, tmp_path, prompts_file):
    cfg = hub_cfg(tmp_path, prompts_file, str(tmp_path / "store"))
    campaign_flow(cfg)
    store = Path(cfg.store.root)
    index = json.loads((store / "campaigns/hubtest/index.json").read_text())["rounds"]
    data_repo = hub.state.repos[("dataset", "me/rf-data")]
    model_repo = hub.state.repos[("model", "me/rf-data-models")]
    assert data_repo.private and set(model_repo.branches) >= {"main", "hubtest-r0", "hubtest-r1"}
    for entry in (e for stages in index.values() for e in stages.values()):
        manifest = json.loads((store / "artifacts" / entry["id"] / "manifest.json").read_text())
        assert manifest["hub"] == entry["hub"] and manifest["hub"]["path"] == entry["id"]
        repo = model_repo if manifest["kind"] == "model" else data_repo
        assert f"{entry['id']}/manifest.json" in repo.commits[entry["hub"]["commit"]]
    train = index["1"]["train"]["hub"]
    assert train["branch"] == "hubtest-r1" and train["repo"] == "me/rf-data-models"
    card = data_repo.commits[data_repo.branches["main"]]["README.md"].decode()
    assert "config_name: hubtest-r1-generate" in card and index["1"]["generate"]["id"] in card

    # `load_dataset(repo, "<campaign>-r1-generate")` in a fresh process reads the artifact from the Hub
    script = ("import sys, datasets; ds = datasets.load_dataset('me/rf-data', 'hubtest-r1-generate', split='train'); "
              "print('ROWS', len(ds), sorted(ds.column_names)[:3])")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ROWS 12" in done.stdout

    # a deleted artifact comes back from the Hub at its pinned commit, not made again
    generated = index["1"]["generate"]["id"]
    made = json.loads((store / "artifacts" / generated / "manifest.json").read_text())["created_at"]
    shutil.rmtree(store / "artifacts" / generated)
    before = len(hub.state.requests)
    campaign_flow(cfg)
    again = json.loads((store / "artifacts" / generated / "manifest.json").read_text())
    assert again["created_at"] == made and again["hub"]["commit"] == index["1"]["generate"]["hub"]["commit"]
    assert any(f"/resolve/{again['hub']['commit']}/{generated}/" in r for r in hub.state.requests[before:])

    # a new machine (empty store) gets every artifact from the Hub
    fresh = hub_cfg(tmp_path, prompts_file, str(tmp_path / "fresh"))
    campaign_flow(fresh)
    moved = json.loads((tmp_path / "fresh/artifacts" / generated / "manifest.json").read_text())
    assert moved["created_at"] == made
    assert "hf_standinTokenSecret42" not in "".join(
        p.read_text(errors="ignore") for p in (tmp_path / "fresh").rglob("*.json"))


def test_network_errors_are_retried_and_leave_the_store_intact(hub, tmp_path, prompts_file):
    cfg = make_config(tmp_path, prompts_file, campaign="flaky", hub={"dataset_repo": "me/flaky"},
                      stop_after="generate")
    hub.state.fail_next = 3  # the first requests answer 503
    campaign_flow(cfg)
    store = Path(cfg.store.root)
    index = json.loads((store / "campaigns/flaky/index.json").read_text())["rounds"]
    assert all("hub" in entry for stages in index.values() for entry in stages.values())
    assert hub.state.fail_next == 0  # all three faults were met, and retried past
    from rebelflow.store.local import Store

    st = Store(store)
    assert all(st.verify(st.find(e["id"])) is None for stages in index.values() for e in stages.values())
