"""A deployed campaign against a real Prefect server: one round per trigger, a failed round resumed at its
failed stage by the UI's Retry, nothing run once every round is done, and never two runs at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_config

pytestmark = pytest.mark.slow


def wait_for_deployment(name: str, proc: subprocess.Popen, timeout: float = 120):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while time.time() < deadline:
            assert proc.poll() is None, "rebelflow deploy exited"
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                time.sleep(1)
    raise TimeoutError(name)


def wait_final(flow_run_id, timeout: float = 400):
    from prefect.client.orchestration import get_client

    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while time.time() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} did not finish")


def logs(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(entry.message for entry in found)


def wait_for_log(flow_run_id, text: str, timeout: float = 60) -> bool:
    """Logs reach the server in batches a few seconds after the run: poll for `text`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in logs(flow_run_id):
            return True
        time.sleep(1)
    return False


def trigger(name: str):
    from prefect.deployments import run_deployment

    return run_deployment(name, timeout=0)  # returns at once; the served runner picks it up


@pytest.fixture
def served(prefect_server, tmp_path, prompts_file):
    cfg = make_config(tmp_path, prompts_file, campaign="sched", rounds=2,
                      reward={"backend": "rule", "function": f"{REPO}/tests/ops/flaky_reward.py:reward"})
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"store"})))
    marker = tmp_path / "reward-is-down"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "REBELFLOW_TEST_BREAK": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "rebelflow.cli", "deploy", str(path), "--name", "sched-test",
                             "--store", str(tmp_path / "store")], env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deployment = wait_for_deployment("campaign-next-round/sched-test", proc)
    yield deployment, tmp_path / "store", marker
    from rebelflow.running.launch import kill_tree

    kill_tree(proc.pid)


def index(store: Path) -> dict:
    return json.loads((store / "campaigns/sched/index.json").read_text())["rounds"]


def test_a_deployed_campaign_runs_a_round_per_trigger_and_resumes_a_failed_one(served):
    from prefect.client.orchestration import get_client
    from prefect.states import AwaitingRetry

    deployment, store, marker = served
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
    assert deployment.parameters["config"].endswith("campaign.yaml") and "store" in deployment.parameters

    first = wait_final(trigger("campaign-next-round/sched-test").id)
    assert first.state.is_completed(), logs(first.id)[-3000:]
    assert "evaluate" in index(store)["1"] and "2" not in index(store)  # round 1 only
    policy = index(store)["1"]["train"]["id"]
    assert wait_for_log(first.id, f"rebelflow export {policy} DIR")  # where the round's policy is

    marker.touch()  # the reward breaks: round 2 fails at its score stage
    second = wait_final(trigger("campaign-next-round/sched-test").id)
    assert second.state.is_failed()
    assert index(store)["2"]["score"]["state"] == "failed"
    generated = index(store)["2"]["generate"]["id"]
    made_at = (store / "artifacts" / generated / "manifest.json").stat().st_mtime

    marker.unlink()  # fixed; the UI's Retry puts the same flow run back in AwaitingRetry
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(second.id, AwaitingRetry(), force=True)
    retried = wait_final(second.id)
    assert retried.state.is_completed() and retried.run_count == 2
    assert index(store)["2"]["evaluate"]["state"] == "completed"
    assert (store / "artifacts" / generated / "manifest.json").stat().st_mtime == made_at  # not generated again

    third = wait_final(trigger("campaign-next-round/sched-test").id)
    assert third.state.is_completed() and wait_for_log(third.id, "all 2 rounds are complete")


def test_prefect_yaml_deploys_on_a_real_server(prefect_server):
    """`prefect deploy --all` with the shipped prefect.yaml registers the campaign, round and reward-model
    deployments on the rebelflow work pool, each with a concurrency limit of 1."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="rebelflow", type="process"), overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "REBELFLOW_HOME": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with get_client(sync_client=True) as client:
        names = {"campaign-next-round/demo-rebel-next-round", "campaign-rounds/demo-rebel-round",
                 "reward-model-entry/demo-rm"}
        for name in names:
            deployment = client.read_deployment_by_name(name)
            assert deployment.work_pool_name == "rebelflow"
            assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1


def test_a_deployment_on_a_work_pool_runs_on_rebelflow_worker(prefect_server, tmp_path, prompts_file):
    """`rebelflow deploy --pool` registers the deployment with this checkout as its code and returns;
    `rebelflow worker --pool` runs its flow runs."""
    from rebelflow.running.launch import kill_tree

    cfg = make_config(tmp_path, prompts_file, campaign="pooled", stop_after="generate")
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"store"})))
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    done = subprocess.run([sys.executable, "-m", "rebelflow.cli", "deploy", str(path), "--pool", "gpu-box",
                           "--cron", "0 3 * * *", "--store", str(tmp_path / "store")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "rebelflow worker --pool gpu-box" in done.stdout
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("campaign-next-round/pooled")
    assert deployment.work_pool_name == "gpu-box" and deployment.schedules[0].schedule.cron == "0 3 * * *"
    worker = subprocess.Popen([sys.executable, "-m", "rebelflow.cli", "worker", "--pool", "gpu-box"], env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        run = wait_final(trigger("campaign-next-round/pooled").id)
        assert run.state.is_completed(), logs(run.id)[-3000:]
        assert "generate" in json.loads((tmp_path / "store/campaigns/pooled/index.json").read_text())["rounds"]["1"]
    finally:
        kill_tree(worker.pid)
