"""Python callables named in a config: `module:function` or `path/to/file.py:function` (rule rewards,
scripted users). Errors name the config key, and the source hash lets a fingerprint follow edits."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from rebelflow.config.errors import ConfigError


def _module_file(spec: str, key: str = "reward.function") -> Path:
    module, _, _ = spec.rpartition(":")
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise ConfigError(f"[{key}] {spec!r}: file {module} not found.")
        return path
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        found, err = None, exc
    else:
        err = None
    if found is None or found.origin is None:
        raise ConfigError(
            f"[{key}] {spec!r}: module {module!r} cannot be imported ({err or 'not found'}). "
            "Install it, put it on PYTHONPATH, or name a file: path/to/rewards.py:function."
        )
    return Path(found.origin)


def load_callable(spec: str, key: str = "reward.function") -> Callable:
    """Import `module:function` or `file.py:function`; raise ConfigError naming what is missing."""
    module, _, name = spec.rpartition(":")
    path = _module_file(spec, key)
    if module.endswith(".py"):
        loader_spec = importlib.util.spec_from_file_location(f"rebelflow_user_{path.stem}", path)
        mod = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    fn = getattr(mod, name, None)
    if not callable(fn):
        public = [n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n))]
        raise ConfigError(f"[{key}] {spec!r}: no function {name!r} in {path}. Callables there: {public}.")
    return fn


def source_hash(spec: str, key: str = "reward.function") -> str:
    """Hash of the file that defines the rule, so editing the rule re-scores."""
    return f"{spec.rpartition(':')[2]}@" + hashlib.sha256(_module_file(spec, key).read_bytes()).hexdigest()[:16]
