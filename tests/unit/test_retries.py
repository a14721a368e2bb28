"""Which failures the stage tasks retry: transient ones only, classified the same for every launcher."""

import pytest
from prefect.states import Failed

from rebelflow.config.errors import ConfigError, DataError, StageFailed, TransientError, is_transient
from rebelflow.tasks import transient_only


class HTTPStatus(Exception):
    def __init__(self, code):
        super().__init__(f"HTTP {code}")
        self.response = type("Response", (), {"status_code": code})()


@pytest.mark.parametrize(
    "exc, retried",
    [
        (ConnectionError("reset"), True),
        (TimeoutError("slow"), True),
        (TransientError("lost the engine"), True),
        (HTTPStatus(503), True),
        (HTTPStatus(429), True),
        (HTTPStatus(404), False),
        (StageFailed("ValueError: a bug"), False),
        (DataError("empty file"), False),
        (ConfigError("bad key"), False),
        (ValueError("a bug"), False),
        (MemoryError(), False),
        (FileNotFoundError("gone"), False),
    ],
)
def test_only_transient_failures_are_retried(exc, retried):
    assert transient_only(None, None, Failed(data=exc)) is retried
    assert is_transient(exc) is retried
