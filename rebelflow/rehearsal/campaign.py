"""Rehearsing a campaign preset: the same stages, engines, launchers (accelerate configs included),
reward backend and user kind; tiny models of the same families, generated prompts with the preset's
columns, sizes small enough for a CPU, every substitution noted."""

from __future__ import annotations

import copy
import json

from rebelflow.config.campaign import PromptsConfig, RunConfig
from rebelflow.rehearsal import data, models
from rebelflow.rehearsal.common import (
    SMALL_NEW_TOKENS,
    Rehearsal,
    cpu_dtype,
    scale_launcher,
    section,
    slug,
    tracking_offline,
)

ROUNDS = 2  # round 2 starts from round 1's trained model: the step most likely to break
UPDATES = 2  # optimizer updates per round (a third when prepare drops none of the spare prompts)
EVAL_PROMPTS = 8
MAX_MODEL_LEN = 2048  # the tiny models' positions


def note_model(r: Rehearsal, key: str, source: str, made, what: str = "model") -> None:
    *parents, last = key.split(".")
    section(r.raw, *parents)[last] = str(made)
    built = json.loads((made / models.MARKER).read_text())
    r.notes.append(f"{key}: {source} -> a tiny random {built['family']} {what} with {built['tokenizer']} ({made})")


def reward_kind(backend: str) -> str:
    if backend == "armorm":
        return "ArmoRM stand-in (its own code, loaded with trust_remote_code; gated multi-objective head)"
    if backend == "value_head":
        return "backbone + value head checkpoint, laid out as reward.value_head says"
    return "sequence classifier"


def rehearse_reward(r: Rehearsal, key: str, reward) -> None:
    """A classifier or ArmoRM reward model becomes a tiny one of its family (its pad token kept); a reward
    model made by rm-train (`artifact`) is taken from the rehearsal's store, where `rm-train --rehearse`
    puts it; a rule reward is already cheap."""
    if reward is None or reward.backend == "rule" or reward.artifact:
        return
    extra = (reward.pad_token,) if reward.pad_token else ()
    kind = reward.backend if reward.backend in ("armorm", "value_head") else "classifier"
    made = models.stand_in(kind, reward.model, r.inputs / "models", "reward", 2, reward.dtype, extra, reward.value_head)
    note_model(r, f"{key}.model", reward.model, made, reward_kind(reward.backend))
    if reward.tokenizer is not None:
        r.set(f"{key}.tokenizer", str(made), "the stand-in's own tokenizer", old=reward.tokenizer)
    if reward.value_head is not None and "/" in reward.value_head.config:
        r.set(f"{key}.value_head.config", "self", "the stand-in's config.json is its backbone's",
              old=reward.value_head.config)


def rehearse_models(r: Rehearsal, cfg: RunConfig) -> None:
    """Policy, reward model and simulated user become tiny models of their families."""
    if cfg.policy.model != "tiny":
        made = models.stand_in("causal_lm", cfg.policy.model, r.inputs / "models", "policy", 0, cfg.train.dtype)
        note_model(r, "policy.model", cfg.policy.model, made)
    rehearse_reward(r, "reward", cfg.reward)
    user = cfg.dialogue.user if cfg.dialogue is not None else None
    if user is not None and user.kind == "llm":
        name = user.model or user.openai.model
        made = models.stand_in("causal_lm", name, r.inputs / "models", "user", 1, user.dtype)
        note_model(r, "dialogue.user.model", name, made)
    judge = cfg.evaluate.judge if "evaluate" in cfg.stages() else None
    if judge is not None and judge.kind == "openai":  # no endpoint is called (or billed) in a rehearsal
        r.set("evaluate.judge.kind", "callable", "a served judge is rehearsed by a scripted stand-in", old="openai")
        r.set("evaluate.judge.function", "rebelflow.judges.examples:stand_in", "answers in the judge's format")
        section(r.raw, "evaluate", "judge").pop("openai", None)


def user_engine(r: Rehearsal, cfg: RunConfig) -> str | None:
    """The simulated user's engine in the rehearsal: a served user (openai) runs locally on the policy's
    engine kind, with a memory share that fits beside the policy's."""
    user = cfg.dialogue.user if cfg.dialogue is not None else None
    if user is None or user.kind != "llm":
        return None
    if user.engine != "openai":
        return user.engine
    r.set("dialogue.user.engine", cfg.generate.engine, "a served user is rehearsed on a local engine", old="openai")
    section(r.raw, "dialogue", "user").pop("openai", None)
    room = round(0.95 - cfg.generate.vllm.gpu_memory_utilization, 2)
    if cfg.generate.engine == "vllm" and user.vllm.gpu_memory_utilization > room:
        r.shrink("dialogue.user.vllm.gpu_memory_utilization", user.vllm.gpu_memory_utilization, room)
    return cfg.generate.engine


def rehearse_prompts(r: Rehearsal, cfg: RunConfig, per_round: int) -> None:
    """Prompts from the Hub become a generated file with the same columns; a held-out evaluation slice of
    the same dataset stays held out (its offset moves past the rows the rounds take)."""
    train = cfg.prompts
    used = per_round * (r.raw["rounds"] if train.selection == "disjoint" else 1)
    eval_p = cfg.evaluate.prompts if "evaluate" in cfg.stages() else None
    same = eval_p is not None and (eval_p.source, eval_p.split) == (train.source, train.split)
    user = cfg.dialogue.user if cfg.dialogue is not None else None
    turns = (user.turns_column if user is not None and user.kind == "dataset" else None, cfg.dialogue.turns - 1
             if cfg.dialogue is not None else 0)
    if not train.is_local():
        if train.offset:
            r.set("prompts.offset", 0, "the generated sample starts at the slice")
        if same:
            r.set("evaluate.prompts.offset", used, "held out: past the rows the rehearsal's rounds take")
        count = used + (EVAL_PROMPTS if same else 0)
        path = data.write_jsonl(rows_for([train, eval_p] if same else [train], count, *turns), r.inputs / "data",
                                f"prompts-{slug(train.source)}")
        replace_source(r, "prompts", train, path, count)
        if same:
            replace_source(r, "evaluate.prompts", eval_p, path, count)
    if eval_p is not None and not same and not eval_p.is_local():
        if eval_p.offset:
            r.set("evaluate.prompts.offset", 0, "the generated sample starts at the slice")
        path = data.write_jsonl(rows_for([eval_p], EVAL_PROMPTS, *turns), r.inputs / "data", f"eval-{slug(eval_p.source)}")
        replace_source(r, "evaluate.prompts", eval_p, path, EVAL_PROMPTS)


def rows_for(specs: list[PromptsConfig], count: int, turns_column: str | None, later: int) -> list[dict]:
    """Rows carrying the columns of every spec that reads them (training and evaluation may name others)."""
    rows = [{} for _ in range(count)]
    for p in specs:
        made = data.prompt_rows(count, p.prompt_column, p.messages_column, p.id_column, p.first_turn_only,
                                turns_column, later)
        for row, extra in zip(rows, made, strict=True):
            row.update({k: v for k, v in extra.items() if k not in row})
    return rows


def replace_source(r: Rehearsal, key: str, p: PromptsConfig, path, count: int) -> None:
    node = section(r.raw, *key.split("."))
    node["source"], node["split"] = str(path), "train"
    node.pop("revision", None)
    r.notes.append(f"{key}.source: {p.source} ({p.split}) -> {count} generated rows with its columns ({path})")


def rehearse_sft(r: Rehearsal, cfg: RunConfig, per_update: int) -> None:
    """Demonstrations for two updates: generated for a Hub dataset, the first rows of a local file."""
    sft = cfg.sft
    if sft is None:
        return
    count = UPDATES * per_update
    if sft.data.endswith((".jsonl", ".json", ".parquet", ".csv")):
        rows, what = data.first_rows(sft.data, count), "its first rows"
    else:
        say = data.Sentences(3)
        rows = [({sft.messages_column: [{"role": "user", "content": say(2)}, {"role": "assistant", "content": say(2)}]}
                 if sft.messages_column else {sft.prompt_column: say(2), sft.response_column: say(2)})
                for _ in range(count)]
        what = "generated demonstrations with its columns"
    path = data.write_jsonl(rows, r.inputs / "data", f"sft-{slug(sft.data)}")
    section(r.raw, "sft").update(data=str(path), split="train")
    r.notes.append(f"sft.data: {sft.data} -> {len(rows)} {what} ({path})")
    r.shrink("sft.examples_per_update", sft.examples_per_update, per_update, "two updates")
    r.set("sft.micro_batch", 1, old=sft.micro_batch)
    r.shrink("sft.checkpoint_every", sft.checkpoint_every, 1, "every update: exercise the checkpoints")
    cpu_dtype(r, "sft.dtype", sft.dtype)


def rehearse_sizes(r: Rehearsal, cfg: RunConfig) -> None:
    """Small sizes: a few prompts, two updates per round, short replies."""
    ranks = scale_launcher(r, "train.launcher", cfg.train.launcher)
    per_update = 2 * ranks  # one pair per micro-batch, two micro-batches per rank: accumulation runs
    validation = min(cfg.prepare.validation_pairs, 4)
    per_round = validation + UPDATES * per_update + 4  # a few spare for pairs prepare may drop
    r.shrink("train.pairs_per_update", cfg.train.pairs_per_update, per_update, "two updates per round")
    r.set("train.micro_batch_pairs", 1, old=cfg.train.micro_batch_pairs)
    r.shrink("train.eval_every", cfg.train.eval_every, 1, "every update: exercise validation")
    r.shrink("train.checkpoint_every", cfg.train.checkpoint_every, 1, "every update: exercise the checkpoints")
    r.shrink("prepare.validation_pairs", cfg.prepare.validation_pairs, validation)
    r.shrink("prompts.per_round", cfg.prompts.per_round, per_round)
    sizes = [("generate.max_new_tokens", cfg.generate.max_new_tokens, SMALL_NEW_TOKENS),
             ("generate.batch_size", cfg.generate.batch_size, 8), ("generate.shard_size", cfg.generate.shard_size, 8),
             ("score.shard_size", cfg.score.shard_size, 8), ("logprobs.batch_pairs", cfg.logprobs.batch_pairs, 2),
             ("evaluate.max_new_tokens", cfg.evaluate.max_new_tokens, SMALL_NEW_TOKENS),
             ("evaluate.batch_size", cfg.evaluate.batch_size, 8)]
    if cfg.reward.backend != "rule":
        sizes += [("reward.batch_size", cfg.reward.batch_size, 4),
                  ("reward.max_length", cfg.reward.max_length, MAX_MODEL_LEN)]
    if cfg.evaluate.prompts is not None:
        sizes.append(("evaluate.prompts.per_round", cfg.evaluate.prompts.per_round, EVAL_PROMPTS))
    if cfg.dialogue is not None and cfg.dialogue.user.kind == "llm":
        sizes.append(("dialogue.user.max_new_tokens", cfg.dialogue.user.max_new_tokens, SMALL_NEW_TOKENS))
    if cfg.online is not None:  # a few small iterations, a checkpoint and a validation among them
        o = cfg.online
        sizes += [("online.iterations", o.iterations, 4), ("online.prompts_per_iteration", o.prompts_per_iteration, 4),
                  ("online.samples_per_prompt", o.samples_per_prompt, 2), ("online.minibatch_pairs", o.minibatch_pairs, 2),
                  ("online.checkpoint_every", o.checkpoint_every, 2), ("online.validate_every", o.validate_every, 2),
                  ("online.validation_prompts", o.validation_prompts, 4)]
        if o.ppo is not None:
            sizes.append(("online.ppo.minibatch_responses", o.ppo.minibatch_responses, 2))
    if isinstance(cfg.train.trainable, int):
        sizes.append(("train.trainable", cfg.train.trainable, 1,
                      "the stand-ins have 2 layers: the top one trains, the one below stays frozen (and shared with "
                      "the reference of online rounds)"))
    for key, value, cap, *why in sizes:
        r.shrink(key, value, cap, *why)
    rehearse_sft(r, cfg, per_update)


def rehearse_machine(r: Rehearsal, cfg: RunConfig, user_engine: str | None) -> None:
    """Launchers, engines and dtypes as this CPU machine can run them; Hub uploads and online tracking off."""
    for name in ("generate", "score", "prepare", "logprobs", "evaluate"):
        scale_launcher(r, f"{name}.launcher", getattr(cfg, name).launcher)
    if cfg.sft is not None:
        scale_launcher(r, "sft.launcher", cfg.sft.launcher)
    engines = [("generate.vllm", cfg.generate.vllm)] if cfg.generate.engine == "vllm" else []
    if user_engine == "vllm":
        engines.append(("dialogue.user.vllm", cfg.dialogue.user.vllm))
    for key, v in engines:
        r.shrink(f"{key}.tensor_parallel_size", v.tensor_parallel_size, 1, "vLLM's CPU build runs one process")
        r.shrink(f"{key}.max_model_len", v.max_model_len, MAX_MODEL_LEN, "the tiny model's positions")
        r.shrink(f"{key}.kv_cache_gib", v.kv_cache_gib, 1)
        if not v.enforce_eager:
            r.set(f"{key}.enforce_eager", True, "no graph capture on CPU: each engine starts ~10 s sooner", old=False)
    dtypes = [("generate.dtype", cfg.generate.dtype), ("reward.dtype", cfg.reward.dtype),
              ("logprobs.dtype", cfg.logprobs.dtype), ("train.dtype", cfg.train.dtype)]
    if user_engine is not None:
        dtypes.append(("dialogue.user.dtype", cfg.dialogue.user.dtype))
    for key, dtype in dtypes:
        cpu_dtype(r, key, dtype)
    if cfg.hub is not None:
        r.raw.pop("hub")
        r.notes.append(f"hub: {cfg.hub.dataset_repo} -> off (a rehearsal uploads nothing)")
    tracking_offline(r, cfg.tracking.wandb)


def rehearse(cfg: RunConfig, raw: dict, r: Rehearsal) -> None:
    """Edit r.raw (a copy of the preset's raw config) into its rehearsal; `cfg` is the preset validated."""
    r.raw.update(copy.deepcopy(raw))
    r.set("campaign", f"{cfg.campaign}-rehearsal"[:64])
    if cfg.rounds > ROUNDS:
        r.set("rounds", ROUNDS, "round 2 starts from round 1's model, as every later round does")
    r.raw.setdefault("rounds", cfg.rounds)
    rehearse_machine(r, cfg, user_engine(r, cfg))
    rehearse_sizes(r, cfg)
    rehearse_prompts(r, cfg, r.raw["prompts"].get("per_round") or cfg.prompts.per_round)
    rehearse_models(r, cfg)
