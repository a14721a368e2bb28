"""Rule rewards: a Python callable `fn(messages, response) -> float`, named `module:function` or
`path/to/file.py:function`. A call that raises or returns a non-number marks that one response invalid
with the reason; it never stops the stage."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from rebelflow.errors import ConfigError
from rebelflow.rewards import Message, Reward, checked


def _module_file(spec: str) -> Path:
    module, _, _ = spec.rpartition(":")
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise ConfigError(f"[reward.function] {spec!r}: file {module} not found.")
        return path
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        found, err = None, exc
    else:
        err = None
    if found is None or found.origin is None:
        raise ConfigError(
            f"[reward.function] {spec!r}: module {module!r} cannot be imported ({err or 'not found'}). "
            "Install it, put it on PYTHONPATH, or name a file: path/to/rewards.py:function."
        )
    return Path(found.origin)


def load_callable(spec: str) -> Callable:
    """Import `module:function` or `file.py:function`; raise ConfigError naming what is missing."""
    module, _, name = spec.rpartition(":")
    path = _module_file(spec)
    if module.endswith(".py"):
        loader_spec = importlib.util.spec_from_file_location(f"rebelflow_user_{path.stem}", path)
        mod = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    fn = getattr(mod, name, None)
    if not callable(fn):
        public = [n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n))]
        raise ConfigError(f"[reward.function] {spec!r}: no function {name!r} in {path}. Callables there: {public}.")
    return fn


def source_hash(spec: str) -> str:
    """Hash of the file that defines the rule, so editing the rule re-scores."""
    return f"{spec.rpartition(':')[2]}@" + hashlib.sha256(_module_file(spec).read_bytes()).hexdigest()[:16]


class RuleReward:
    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_callable(spec)

    def score(self, items: list[tuple[list[Message], str]]) -> list[Reward]:
        out = []
        for messages, response in items:
            try:
                value = self.fn(messages, response)
            except Exception as exc:  # one bad row must not stop the stage; the reason is kept and counted
                out.append(Reward(float("nan"), f"{self.spec} raised {type(exc).__name__}: {exc}"[:300]))
                continue
            out.append(checked(value))
        return out
