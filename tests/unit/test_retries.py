"""Which failures the stage tasks retry: transient ones only."""

import pytest
from prefect.states import Failed

from rebelflow.config.errors import ConfigError, DataError
from rebelflow.running.launch import StageProcessError
from rebelflow.tasks import transient_only


@pytest.mark.parametrize(
    "exc, retried",
    [
        (ConnectionError("reset"), True),
        (TimeoutError("slow"), True),
        (StageProcessError("exited with -9"), True),
        (DataError("empty file"), False),
        (ConfigError("bad key"), False),
        (ValueError("a bug"), False),
        (FileNotFoundError("gone"), False),
    ],
)
def test_only_transient_failures_are_retried(exc, retried):
    assert transient_only(None, None, Failed(data=exc)) is retried
