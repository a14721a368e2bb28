"""Errors a user can act on. They are never retried and the CLI prints them without a traceback."""


class RebelflowError(Exception):
    """Base class for problems in the user's config or data (not transient, not bugs)."""


class ConfigError(RebelflowError):
    """The run configuration is invalid; raised before any stage starts."""


class DataError(RebelflowError):
    """An input (prompts file, reward function, model) cannot be used as given."""
