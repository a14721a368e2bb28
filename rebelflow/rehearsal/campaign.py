"""Rehearsing a campaign preset: the same stages, engines, launchers (accelerate configs included),
reward backend and user kind; tiny models of the same families, generated prompts with the preset's
columns, sizes small enough for a CPU, every substitution noted."""

from __future__ import annotations

import copy

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
UPDATES = 2  # optimizer updates per round
EVAL_PROMPTS = 8
MAX_MODEL_LEN = 2048  # the tiny models' positions


def rehearse_models(r: Rehearsal, cfg: RunConfig) -> None:
    """Policy, reward model and simulated user become tiny models of their families."""
    folder = r.inputs / "models"
    with r.store.lock("rehearsal-inputs"):
        if cfg.policy.model != "tiny":
            made = models.causal_lm(cfg.policy.model, folder / f"policy-{slug(cfg.policy.model)}", 0, cfg.train.dtype)
            note_model(r, "policy.model", cfg.policy.model, made)
        reward = cfg.reward
        if reward.backend in ("classifier", "armorm"):
            build = models.armorm if reward.backend == "armorm" else models.classifier
            made = build(reward.model, folder / f"reward-{reward.backend}-{slug(reward.model)}", 2, reward.dtype)
            if reward.artifact:
                section(r.raw, "reward").pop("artifact", None)
            note_model(r, "reward.model", reward.artifact or reward.model, made, reward_kind(reward.backend))
        user = cfg.dialogue.user if cfg.dialogue is not None else None
        if user is not None and user.kind == "llm":
            rehearse_llm_user(r, cfg, user, folder)


def rehearse_llm_user(r: Rehearsal, cfg: RunConfig, user, folder) -> None:
    name = user.model or (user.openai.model if user.openai else "user")
    if user.engine == "openai":  # a served user: the rehearsal runs the same model kind locally
        r.set("dialogue.user.engine", cfg.generate.engine, "a served user is rehearsed with a local engine")
        section(r.raw, "dialogue", "user").pop("openai", None)
    made = models.causal_lm(name, folder / f"user-{slug(name)}", 1, user.dtype)
    note_model(r, "dialogue.user.model", name, made)


def note_model(r: Rehearsal, key: str, source: str, made, what: str = "model") -> None:
    *parents, last = key.split(".")
    section(r.raw, *parents)[last] = str(made)
    family = models.family_of(source)
    r.notes.append(f"{key}: {source} -> a tiny random {family.name} {what} with {models.tokenizer_note(family)} "
                   f"({made})")


def reward_kind(backend: str) -> str:
    if backend == "armorm":
        return "ArmoRM stand-in (its own code, loaded with trust_remote_code; gated multi-objective head)"
    return "sequence classifier"


def rehearse_prompts(r: Rehearsal, cfg: RunConfig, per_round: int) -> None:
    """Prompts from the Hub become a generated file with the same columns; a held-out evaluation slice of
    the same dataset stays held out (its offset moves past the rows the rounds take)."""
    rounds = r.raw["rounds"]
    train = cfg.prompts
    used = per_round * (rounds if train.selection == "disjoint" else 1)
    eval_p = cfg.evaluate.prompts if "evaluate" in cfg.stages() else None
    same = eval_p is not None and (eval_p.source, eval_p.split) == (train.source, train.split)
    if train.offset:
        r.set("prompts.offset", 0, "the generated sample starts at the slice")
    if same and not train.is_local():
        r.set("evaluate.prompts.offset", used, "held out: past the rows the rehearsal's rounds take")
    user = cfg.dialogue.user if cfg.dialogue is not None else None
    turns_column = user.turns_column if user is not None and user.kind == "dataset" else None
    later = cfg.dialogue.turns - 1 if cfg.dialogue is not None else 0
    if not train.is_local():
        count = used + (EVAL_PROMPTS if same else 0)
        rows = rows_for([train, eval_p] if same else [train], count, turns_column, later)
        path = data.write_jsonl(rows, r.inputs / "data" / f"prompts-{slug(train.source)}-{slug(train.split)}.jsonl")
        replace_source(r, "prompts", train, path, count)
        if same:
            replace_source(r, "evaluate.prompts", eval_p, path, count)
    if eval_p is not None and not same and not eval_p.is_local():
        if eval_p.offset:
            r.set("evaluate.prompts.offset", 0, "the generated sample starts at the slice")
        path = data.write_jsonl(rows_for([eval_p], EVAL_PROMPTS, None, 0),
                                r.inputs / "data" / f"eval-{slug(eval_p.source)}-{slug(eval_p.split)}.jsonl")
        replace_source(r, "evaluate.prompts", eval_p, path, EVAL_PROMPTS)


def rows_for(specs: list[PromptsConfig], count: int, turns_column: str | None, later: int) -> list[dict]:
    """Rows carrying the columns of every spec that reads them (training and evaluation may name others)."""
    rows = [{} for _ in range(count)]
    for i, p in enumerate(specs):
        made = data.prompt_rows(count, p.prompt_column, p.messages_column, p.id_column, p.first_turn_only,
                                turns_column if i == 0 else None, later)
        for row, extra in zip(rows, made, strict=True):
            row.update({k: v for k, v in extra.items() if k not in row})
    return rows


def replace_source(r: Rehearsal, key: str, p: PromptsConfig, path, count: int) -> None:
    node = section(r.raw, *key.split("."))
    node["source"], node["split"] = str(path), "train"
    node.pop("revision", None)
    r.notes.append(f"{key}.source: {p.source} ({p.split}) -> {count} generated rows with its columns ({path})")


def rehearse_sft(r: Rehearsal, cfg: RunConfig, per_update: int) -> None:
    sft = cfg.sft
    if sft is None:
        return
    if not sft.data.endswith((".jsonl", ".json", ".parquet", ".csv")):
        say = data.Sentences(3)
        rows = [({sft.messages_column: [{"role": "user", "content": say(2)}, {"role": "assistant", "content": say(2)}]}
                 if sft.messages_column else {sft.prompt_column: say(2), sft.response_column: say(2)})
                for _ in range(UPDATES * per_update)]
        path = data.write_jsonl(rows, r.inputs / "data" / f"sft-{slug(sft.data)}.jsonl")
        section(r.raw, "sft").update(data=str(path), split="train")
        r.notes.append(f"sft.data: {sft.data} -> {len(rows)} generated demonstrations with its columns ({path})")
    r.shrink("sft.examples_per_update", sft.examples_per_update, per_update, "two updates")
    r.set("sft.micro_batch", 1)
    r.shrink("sft.checkpoint_every", sft.checkpoint_every, 1, "every update: exercise the checkpoints")
    cpu_dtype(r, "sft.dtype", sft.dtype)


def rehearse_sizes(r: Rehearsal, cfg: RunConfig) -> None:
    """Small sizes: a few prompts, two updates per round, short replies."""
    ranks = scale_launcher(r, "train.launcher", cfg.train.launcher)
    per_update = 2 * ranks  # one pair per micro-batch, two micro-batches per rank: accumulation runs
    validation = min(cfg.prepare.validation_pairs, 4)
    per_round = validation + UPDATES * per_update + 4  # a few spare for pairs prepare may drop
    r.shrink("train.pairs_per_update", cfg.train.pairs_per_update, per_update, "two updates per round")
    r.set("train.micro_batch_pairs", 1)
    r.shrink("train.eval_every", cfg.train.eval_every, 1, "every update: exercise validation")
    r.shrink("train.checkpoint_every", cfg.train.checkpoint_every, 1, "every update: exercise the checkpoints")
    r.shrink("prepare.validation_pairs", cfg.prepare.validation_pairs, validation)
    if cfg.prompts.per_round is None or cfg.prompts.per_round > per_round:
        r.set("prompts.per_round", per_round)
    for key, value, cap in (("generate.max_new_tokens", cfg.generate.max_new_tokens, SMALL_NEW_TOKENS),
                            ("generate.batch_size", cfg.generate.batch_size, 8),
                            ("generate.shard_size", cfg.generate.shard_size, 8),
                            ("score.shard_size", cfg.score.shard_size, 8),
                            ("reward.batch_size", cfg.reward.batch_size, 4),
                            ("reward.max_length", cfg.reward.max_length, MAX_MODEL_LEN),
                            ("logprobs.batch_pairs", cfg.logprobs.batch_pairs, 2),
                            ("evaluate.max_new_tokens", cfg.evaluate.max_new_tokens, SMALL_NEW_TOKENS),
                            ("evaluate.batch_size", cfg.evaluate.batch_size, 8)):
        r.shrink(key, value, cap)
    if cfg.evaluate.prompts is not None:
        r.shrink("evaluate.prompts.per_round", cfg.evaluate.prompts.per_round, EVAL_PROMPTS)
    if cfg.dialogue is not None and cfg.dialogue.user.kind == "llm":
        r.shrink("dialogue.user.max_new_tokens", cfg.dialogue.user.max_new_tokens, SMALL_NEW_TOKENS)
    rehearse_sft(r, cfg, per_update)


def rehearse_machine(r: Rehearsal, cfg: RunConfig) -> None:
    """Launchers, engines and dtypes as this CPU machine can run them; Hub uploads and online tracking off."""
    for name in ("generate", "score", "prepare", "logprobs", "evaluate"):
        scale_launcher(r, f"{name}.launcher", getattr(cfg, name).launcher)
    if cfg.sft is not None:
        scale_launcher(r, "sft.launcher", cfg.sft.launcher)
    engines = [("generate.vllm", cfg.generate.vllm)] if cfg.generate.engine == "vllm" else []
    user = cfg.dialogue.user if cfg.dialogue is not None else None
    if user is not None and user.kind == "llm" and user.engine == "vllm":
        engines.append(("dialogue.user.vllm", user.vllm))
    for key, v in engines:
        r.shrink(f"{key}.tensor_parallel_size", v.tensor_parallel_size, 1, "vLLM's CPU build runs one process")
        r.shrink(f"{key}.max_model_len", v.max_model_len, MAX_MODEL_LEN, "the tiny model's positions")
        r.shrink(f"{key}.kv_cache_gib", v.kv_cache_gib, 1)
        if not v.enforce_eager:
            r.set(f"{key}.enforce_eager", True, "no graph capture on CPU: each engine starts ~10 s sooner")
    for key, dtype in (("generate.dtype", cfg.generate.dtype), ("reward.dtype", cfg.reward.dtype),
                       ("logprobs.dtype", cfg.logprobs.dtype), ("train.dtype", cfg.train.dtype)):
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
    rehearse_machine(r, cfg)
    rehearse_sizes(r, cfg)
    rehearse_prompts(r, cfg, r.raw["prompts"]["per_round"])
    rehearse_models(r, cfg)
