"""prefect.yaml's deployments point at real flows with parameters those flows accept, and the configs they
name load."""

import inspect

import pytest
import yaml

from tests.conftest import REPO

DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_every_deployment_names_a_flow_and_valid_parameters(deployment):
    from prefect.flows import load_flow_from_entrypoint

    from rebelflow.config.loading import is_reward_model_config, load_config
    from rebelflow.config.reward_model import RMConfig

    path, _, name = deployment["entrypoint"].partition(":")
    assert (REPO / path).is_file()
    flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(deployment["parameters"]) <= accepted and "config" in deployment["parameters"]
    flow.validate_parameters(deployment["parameters"])
    config = REPO / deployment["parameters"]["config"]
    load_config(config, root=RMConfig) if is_reward_model_config(config) else load_config(config)
    assert deployment["concurrency_limit"] == 1 and deployment["work_pool"]["name"] == "rebelflow"
