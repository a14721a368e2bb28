"""Checks before any model loads, shared by `rebelflow run` (preflight), deployments and `rebelflow
doctor`: every round's prompt slice exists and is usable, every stage's interpreter and engine are there,
and what this machine lacks for a config (GPUs for tensor parallelism). Each failure is a ConfigError or
DataError naming the setting and the fix.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from rebelflow.config.campaign import RunConfig
from rebelflow.config.errors import ConfigError, DataError
from rebelflow.planning.campaign import turns_column
from rebelflow.planning.environments import interpreter
from rebelflow.stages import prompts


def preflight(cfg: RunConfig) -> None:
    """Checks that need the data but no model: every round's prompt slice exists and is usable, and so
    do the evaluation prompts; every stage's interpreter and engine are there. Raises DataError or
    ConfigError before any stage starts (reads each source once)."""
    check_engines(cfg)
    check_models(campaign_models(cfg))
    check_reward_tokenizer(cfg.reward)
    check_callables(cfg)
    first = prompts.Settings.from_config(cfg.prompts, 1, turns_column(cfg))
    rows = prompts.load_rows(first)
    for k in range(1, cfg.rounds + 1):
        selected, _ = prompts.select(prompts.Settings.from_config(cfg.prompts, k, turns_column(cfg)), rows)
        check_pairs(cfg, k, len(selected))
    check_prompt_lengths(cfg, prompts.select(first, rows)[0])
    if "evaluate" in cfg.stages():
        held_out = prompts.Settings.from_config(cfg.evaluate.prompts, 1, turns_column(cfg))
        prompts.select(held_out, prompts.load_rows(held_out))


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def campaign_models(cfg: RunConfig) -> dict[str, str]:
    """The models a campaign loads, by config key (the tiny policy is built, not loaded)."""
    models = {} if cfg.policy.model == "tiny" else {"policy.model": cfg.policy.model}
    if cfg.reward.backend != "rule" and cfg.reward.model:
        models["reward.artifact" if cfg.reward.artifact else "reward.model"] = cfg.reward.model
    user = cfg.dialogue.user if cfg.dialogue is not None else None
    if user is not None and user.kind == "llm" and user.engine != "openai" and user.model:
        models["dialogue.user.model"] = user.model
    return models


def reward_model_models(cfg) -> dict[str, str]:
    """The models a reward-model config loads, by config key."""
    models = {} if cfg.model == "tiny" or cfg.data is None else {"model": cfg.model}
    reward = cfg.eval.reward
    if reward is not None and reward.backend != "rule" and reward.model:
        models["eval.reward.model"] = reward.model
    return models


def check_models(models: dict[str, str]) -> None:
    """Every model is a model folder on this machine (with its config.json) or a well-formed Hub id:
    a wrong path fails here, with its key, not a minute later inside a stage."""
    for key, source in models.items():
        path = Path(source).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ConfigError(
                    f"[{key}] {source} is a folder without config.json, so not a model folder. Point {key} at "
                    "the folder that `save_pretrained` wrote (config.json beside the weights)."
                )
            continue
        looks_like_path = path.exists() or source.startswith(("/", ".", "~")) or source.count("/") > 1
        if looks_like_path or not HUB_ID.match(source):
            raise ConfigError(
                f"[{key}] {source!r} is neither a model folder on this machine ({'a file' if path.is_file() else 'no such folder'}) "
                f"nor a Hub model id (name or org/name). Fix the path (relative paths are read from the config "
                "file's folder), or give a Hub id."
            )


def check_reward_tokenizer(reward, key: str = "reward") -> None:
    """A classifier or ArmoRM reward model on this machine has a pad token that is not EOS (or
    reward.pad_token names one): found here, not after generation."""
    if reward is None or reward.backend not in ("classifier", "armorm") or not reward.model:
        return
    if (Path(reward.model).expanduser() / "config.json").is_file():
        from rebelflow.rewards.classifier import load_tokenizer

        try:
            load_tokenizer(reward)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("[reward.", f"[{key}.").replace(" reward.pad_token", f" {key}.pad_token")) from None


def check_callables(cfg: RunConfig) -> None:
    """A rule reward's and a scripted user's function can be imported (a missing file or name fails here, not
    in the stage)."""
    from rebelflow.config.callables import load_callable

    if cfg.reward.backend == "rule":
        load_callable(cfg.reward.function, "reward.function")
    user = cfg.dialogue.user if cfg.dialogue is not None else None
    if user is not None and user.kind == "scripted":
        load_callable(user.function, "dialogue.user.function")
    judge = cfg.evaluate.judge if "evaluate" in cfg.stages() else None
    if judge is not None and judge.kind == "callable":
        load_callable(judge.function, "evaluate.judge.function")
    if judge is not None and judge.kind == "openai" and judge.openai.api_key_env and not os.environ.get(judge.openai.api_key_env):
        raise ConfigError(
            f"[evaluate.judge.openai.api_key_env] the environment variable {judge.openai.api_key_env} is not set: "
            "export the judge endpoint's key there, or set api_key_env: null for a server without keys."
        )


def check_pairs(cfg: RunConfig, k: int, prompt_count: int) -> None:
    """A round of `prompt_count` prompts gives at most one pair per prompt: after the held-out pairs there
    must be one full update's worth."""
    if "train" not in cfg.stages() or cfg.online is not None:  # an online round reuses its prompts as needed
        return
    left = prompt_count - cfg.prepare.validation_pairs
    if left < cfg.train.pairs_per_update:
        raise DataError(
            f"round {k} has {prompt_count} prompts, so at most {prompt_count} pairs; prepare.validation_pairs "
            f"({cfg.prepare.validation_pairs}) are held out, leaving {max(left, 0)}, fewer than "
            f"train.pairs_per_update ({cfg.train.pairs_per_update}): not one update could run. Lower "
            "train.pairs_per_update or prepare.validation_pairs, or use more prompts per round."
        )


def check_prompt_lengths(cfg: RunConfig, rows: list[dict], sample: int = 64) -> None:
    """When the policy's tokenizer is on this machine, the first prompts of round 1 against
    prepare.max_prompt_tokens: if every sampled prompt is longer, no pair could be made."""
    if "prepare" not in cfg.stages() or cfg.policy.model == "tiny" or not (Path(cfg.policy.model) / "config.json").is_file():
        return
    from transformers import AutoTokenizer

    from rebelflow.ml.chat import prompt_ids, with_template

    tokenizer = with_template(AutoTokenizer.from_pretrained(cfg.policy.model, revision=cfg.policy.revision),
                              cfg.policy.chat_template)
    lengths = [len(prompt_ids(tokenizer, row["messages"])) for row in rows[:sample]]
    too_long = sum(n > cfg.prepare.max_prompt_tokens for n in lengths)
    if lengths and too_long == len(lengths):
        raise DataError(
            f"all {len(lengths)} sampled prompts of round 1 are longer than prepare.max_prompt_tokens "
            f"({cfg.prepare.max_prompt_tokens}; the shortest has {min(lengths)} tokens with the chat template), "
            "so prepare would drop every pair. Raise prepare.max_prompt_tokens or use shorter prompts."
        )


def check_engines(cfg: RunConfig) -> None:
    """Where stages will run, checked before any work: every named interpreter exists, and the vLLM engine
    runs where vLLM is installed. Raises ConfigError naming the setting and the fix."""
    steps = ("generate", "score", "prepare", "logprobs", "train", "evaluate")
    launchers = {name: getattr(cfg, name).launcher for name in steps if name != "logprobs" or cfg.train.needs_logprobs}
    if cfg.sft is not None:
        launchers["sft"] = cfg.sft.launcher
    for launcher in launchers.values():
        interpreter(launcher)
    engines = [("generate", cfg.generate.engine)]
    if cfg.dialogue is not None and cfg.dialogue.user.kind == "llm":
        engines.append(("generate", cfg.dialogue.user.engine))
    if "evaluate" in cfg.stages():
        engines.append(("evaluate", cfg.generate.engine))
    for section, engine in engines:
        launcher = launchers[section]
        if engine == "vllm" and launcher.kind == "inprocess" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                f"[{section}.launcher] the vllm engine runs in this process, where vLLM is not installed. Build "
                f"its environment (`make vllm-env`) and set {section}.launcher: {{kind: subprocess, env: vllm}}."
            )
    tiny = cfg.policy.tiny
    if cfg.generate.engine == "vllm" and cfg.policy.model == "tiny" and tiny.hidden_size // tiny.heads < 32:
        raise ConfigError(
            f"[policy.tiny] head size {tiny.hidden_size // tiny.heads} (hidden_size / heads): vLLM's CPU attention "
            "needs 32 or more. Lower policy.tiny.heads or raise hidden_size."
        )


def launcher_problems(launchers) -> list[str]:
    """Launchers whose interpreter is missing."""
    problems = []
    for launcher in launchers:
        try:
            interpreter(launcher)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def engine_problems(cfg: RunConfig) -> list[str]:
    """Every reason this config cannot run on this machine (empty when it can), each with its fix."""
    import torch

    problems = []
    try:
        check_engines(cfg)
    except ConfigError as exc:
        problems.append(str(exc))
    engines = [("generate.vllm", cfg.generate.vllm)] if cfg.generate.engine == "vllm" else []
    user = cfg.dialogue.user if cfg.dialogue is not None else None
    if user is not None and user.kind == "llm" and user.engine == "vllm":
        engines.append(("dialogue.user.vllm", user.vllm))
    gpus = torch.cuda.device_count()
    for where, v in engines:
        if v.tensor_parallel_size > max(gpus, 1):
            problems.append(f"[{where}] tensor_parallel_size {v.tensor_parallel_size} needs that many GPUs; this "
                            f"machine has {gpus}. Run on a GPU machine, or lower tensor_parallel_size.")
    return problems
