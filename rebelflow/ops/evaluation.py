"""What `rebelflow mt-bench` checks before any work: its options as an MTBenchConfig, the policy found, the
interpreter that answers (vLLM's own environment for --engine vllm) and a callable grader imported."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rebelflow.config.errors import ConfigError
from rebelflow.config.loading import format_validation_error
from rebelflow.config.mt_bench import MTBenchConfig
from rebelflow.planning.environments import interpreter
from rebelflow.planning.evaluation import policy_ref
from rebelflow.store.local import Store


def mt_bench_config(policy: str, judge: str, judge_url: str | None, key_env: str | None, concurrency: int,
                    **options: Any) -> MTBenchConfig:
    """`judge`: a served model's name (with `judge_url`) or a callable module:function / file.py:function.
    Raises ConfigError (or DataError for a policy that is not there) naming the fix."""
    callable_judge = ":" in judge and judge_url is None
    if not callable_judge and judge_url is None:
        raise ConfigError(f"--judge {judge!r} names a served model: give its endpoint with --judge-url "
                          "(e.g. http://127.0.0.1:8001/v1), or a Python callable module:function.")
    module, _, fn = judge.rpartition(":")
    if callable_judge and module.endswith(".py"):  # stage processes may run elsewhere: an absolute path
        judge = f"{Path(module).resolve()}:{fn}"
    spec = {"kind": "callable", "function": judge} if callable_judge else {
        "kind": "openai", "openai": {"base_url": judge_url, "model": judge, "api_key_env": key_env,
                                     "concurrency": concurrency}}
    raw = {"policy": policy, "judge": spec, **options}
    if options.get("engine") == "vllm" and importlib.util.find_spec("vllm") is None:
        raw["launcher"] = {"kind": "subprocess", "env": "vllm"}  # vLLM's own environment (make vllm-env)
    try:
        cfg = MTBenchConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "mt-bench", MTBenchConfig)) from None
    policy_ref(Store(cfg.store.root), policy)
    interpreter(cfg.launcher)
    if callable_judge:
        from rebelflow.config.callables import load_callable

        load_callable(judge, "--judge")
    return cfg
