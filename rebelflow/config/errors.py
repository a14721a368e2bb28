"""The errors of every layer, classified once, the same for every launcher:

- `ConfigError`, `DataError` (a `RebelflowError`): the user's config or data; never retried; one message
  that names the problem and the fix.
- `TransientError` (and what `is_transient` recognises: network errors, time-outs, HTTP 429/5xx): may
  pass on its own; the stage task retries it with backoff.
- `StageFailed`: a bug or out-of-memory inside a stage; never retried; the message names the stage, the
  exception class and the stage's log, where the full traceback is.
"""


class RebelflowError(Exception):
    """Base class for problems in the user's config or data (not transient, not bugs)."""


class ConfigError(RebelflowError):
    """The run configuration is invalid; raised before any stage starts."""


class DataError(RebelflowError):
    """An input (prompts file, reward function, model) cannot be used as given."""


class TransientError(Exception):
    """A failure that may pass on its own (the network, a server's 5xx, a lost worker): retried."""


class StageFailed(Exception):
    """A stage failed with a bug or ran out of memory: not retried (it would fail the same way)."""


REPORTED = (RebelflowError, StageFailed, TransientError)  # the CLI prints these as one message


def is_transient(exc: BaseException) -> bool:
    """Network errors, time-outs and HTTP 429/5xx of the clients that transformers, datasets, the Hub and
    OpenAI-compatible endpoints use; never a RebelflowError."""
    if isinstance(exc, RebelflowError):
        return False
    if isinstance(exc, (TransientError, ConnectionError, TimeoutError)):
        return True
    status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "status_code", None)
    if isinstance(status, int) and (status == 429 or status >= 500):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectTimeout", "ReadTimeout", "APIConnectionError", "APITimeoutError",
                         "InternalServerError", "RateLimitError", "ServiceUnavailable"})
