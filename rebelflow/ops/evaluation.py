"""What the evaluation commands check before any work: their options as a config (MTBenchConfig,
AlpacaEvalConfig), the policy found, the interpreter that answers (vLLM's own environment for --engine vllm),
a callable judge imported; AlpacaEval's reference outputs fetched from the Hub when asked for."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rebelflow.config.errors import ConfigError
from rebelflow.config.evaluation import AlpacaEvalConfig, MTBenchConfig
from rebelflow.config.loading import format_validation_error
from rebelflow.planning.environments import interpreter
from rebelflow.planning.evaluation import check_reference, policy_ref
from rebelflow.store.local import Store


def mt_bench_config(policy: str, judge: str, judge_url: str | None, key_env: str | None, concurrency: int,
                    **options: Any) -> MTBenchConfig:
    """`judge`: a served model's name (with `judge_url`) or a callable module:function / file.py:function.
    Raises ConfigError (or DataError for a policy that is not there) naming the fix."""
    return evaluation_config(MTBenchConfig, policy, judge, judge_url, key_env, concurrency, **options)


def alpaca_eval_config(policy: str, reference: str, judge: str, judge_url: str | None, key_env: str | None,
                       concurrency: int, **options: Any) -> AlpacaEvalConfig:
    """As mt_bench_config, with the judge in the preference format and `reference` a local file or `hub`
    (AlpacaEval 2.0's GPT-4 Turbo reference outputs, downloaded into the store once)."""
    if reference == "hub":
        reference = _hub_reference(options["store"]["root"])
    elif not Path(reference).is_file():
        raise ConfigError(f"--reference {reference!r}: no such file. Give AlpacaEval's reference outputs (JSON or "
                          "JSONL of {instruction, output}), or `hub` for AlpacaEval 2.0's own.")
    check_reference(reference, options.get("limit"))  # a bad file stops here, before any model loads
    return evaluation_config(AlpacaEvalConfig, policy, judge, judge_url, key_env, concurrency,
                             reference=str(Path(reference).resolve()), judge_format="preference", **options)


REFERENCE_REPO, REFERENCE_FILE = "tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json"


def _hub_reference(store_root: str) -> str:
    """AlpacaEval 2.0's reference outputs (805 instructions, GPT-4 Turbo's answers) with each instruction's
    difficulty (AlpacaEval's leaderboard fit, the LC GLM's difficulty term), from the Hub, kept in
    <store>/inputs/ so a re-run needs no network."""
    import csv
    import json

    dest = Path(store_root) / "inputs" / REFERENCE_FILE
    if dest.is_file():
        return str(dest)
    from huggingface_hub import hf_hub_download

    try:
        rows = json.loads(Path(hf_hub_download(REFERENCE_REPO, REFERENCE_FILE, repo_type="dataset")).read_text())
        difficulty = Path(hf_hub_download(REFERENCE_REPO, "instruction_difficulty.csv", repo_type="dataset"))
    except Exception as exc:  # offline, blocked, or the files moved
        raise ConfigError(f"could not fetch AlpacaEval's reference outputs from the Hub ({REFERENCE_REPO}: "
                          f"{type(exc).__name__}: {str(exc)[:200]}). Download them where the Hub is reachable and "
                          "pass --reference FILE.") from None
    with open(difficulty) as fh:  # instruction index, difficulty
        values = {int(r[0]): float(r[-1]) for r in list(csv.reader(fh))[1:] if r and r[0].strip().isdigit()}
    if all(i in values for i in range(len(rows))):
        rows = [{**r, "instruction_difficulty": values[i]} for i, r in enumerate(rows)]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(rows))
    return str(dest)


def evaluation_config(root, policy: str, judge: str, judge_url: str | None, key_env: str | None, concurrency: int,
                      judge_format: str = "pair", **options: Any):
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
    raw = {"policy": policy, "judge": {**spec, "format": judge_format}, **options}
    if options.get("engine") == "vllm" and importlib.util.find_spec("vllm") is None:
        raw["launcher"] = {"kind": "subprocess", "env": "vllm"}  # vLLM's own environment (make vllm-env)
    try:
        cfg = root.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "the command's options", root)) from None
    policy_ref(Store(cfg.store.root), policy)
    interpreter(cfg.launcher)
    if callable_judge:
        from rebelflow.config.callables import load_callable

        load_callable(judge, "--judge")
    return cfg
