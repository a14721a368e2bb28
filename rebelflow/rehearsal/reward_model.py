"""Rehearsing a reward-model preset (rm-train, rm-eval): the same stages, launchers and reward backend;
a tiny model of the same family, generated preference pairs and RewardBench rows that carry every subset
of the weighting, sizes scaled down."""

from __future__ import annotations

import copy

from rebelflow.config.reward_model import PreferenceDataConfig, RMConfig
from rebelflow.ml.rewardbench import load_weighting
from rebelflow.rehearsal import data, models
from rebelflow.rehearsal.campaign import UPDATES, note_model, reward_kind
from rebelflow.rehearsal.common import Rehearsal, cpu_dtype, scale_launcher, slug, tracking_offline

MIN_HELDOUT = 0.2  # of a few dozen pairs: enough held out that the accuracy has rows


def rehearse_training(r: Rehearsal, cfg: RMConfig) -> None:
    if cfg.data is None:
        return
    ranks = scale_launcher(r, "train.launcher", cfg.train.launcher)
    per_update = 2 * ranks
    r.shrink("train.pairs_per_update", cfg.train.pairs_per_update, per_update, "two updates")
    r.set("train.micro_batch_pairs", 1)
    r.shrink("train.eval_every", cfg.train.eval_every, 1, "every update: exercise the accuracy curve")
    r.shrink("train.checkpoint_every", cfg.train.checkpoint_every, 1, "every update: exercise the checkpoints")
    r.shrink("train.max_length", cfg.train.max_length, 2048, "the tiny model's positions")
    cpu_dtype(r, "train.dtype", cfg.train.dtype)
    if cfg.data.heldout_fraction < MIN_HELDOUT:
        r.set("data.heldout_fraction", MIN_HELDOUT, "a few pairs: keep some held out")
    pairs = int(UPDATES * per_update / (1 - MIN_HELDOUT)) + 2
    if cfg.data.limit is not None and cfg.data.limit > pairs:
        r.set("data.limit", pairs)
    if not is_file(cfg.data.source):
        rows = data.preference_rows(pairs, cfg.data.chosen_column, cfg.data.rejected_column)
        replace(r, "data", cfg.data, rows, "preference pairs in the messages format")
    if cfg.model != "tiny":
        made = models.causal_lm(cfg.model, r.inputs / "models" / f"base-{slug(cfg.model)}", 0, cfg.train.dtype)
        note_model(r, "model", cfg.model, made)


def rehearse_eval(r: Rehearsal, cfg: RMConfig) -> None:
    ev = cfg.eval
    scale_launcher(r, "eval.launcher", ev.launcher)
    r.shrink("eval.batch_size", ev.batch_size, 4)
    if ev.data is not None and not is_file(ev.data.source):
        subsets = [s for sections in load_weighting(ev.weights).sections.values() for s in sections]
        rows = data.rewardbench_rows(subsets, 2, ev.data.prompt_column, ev.data.chosen_column,
                                     ev.data.rejected_column, ev.data.subset_column)
        replace(r, "eval.data", ev.data, rows, f"RewardBench rows, 2 for each of the {len(subsets)} subsets")
    reward = ev.reward
    if reward is not None and reward.backend in ("classifier", "armorm"):
        build = models.armorm if reward.backend == "armorm" else models.classifier
        made = build(reward.model, r.inputs / "models" / f"reward-{reward.backend}-{slug(reward.model)}", 2,
                     reward.dtype)
        r.raw["eval"]["reward"].pop("artifact", None)
        note_model(r, "eval.reward.model", reward.artifact or reward.model, made, reward_kind(reward.backend))
        r.shrink("eval.reward.batch_size", reward.batch_size, 4)
        r.shrink("eval.reward.max_length", reward.max_length, 2048, "the tiny model's positions")
        cpu_dtype(r, "eval.reward.dtype", reward.dtype)


def is_file(source: str) -> bool:
    return source.endswith((".jsonl", ".json", ".parquet", ".csv"))


def replace(r: Rehearsal, key: str, d: PreferenceDataConfig, rows: list[dict], what: str) -> None:
    path = data.write_jsonl(rows, r.inputs / "data" / f"{key.replace('.', '-')}-{slug(d.source)}.jsonl")
    node = r.raw
    for part in key.split("."):
        node = node[part]
    node["source"], node["split"] = str(path), "train"
    node.pop("revision", None)
    r.notes.append(f"{key}.source: {d.source} ({d.split}) -> {len(rows)} generated {what} ({path})")


def rehearse(cfg: RMConfig, raw: dict, r: Rehearsal) -> None:
    """Edit r.raw (a copy of the preset's raw config) into its rehearsal; `cfg` is the preset validated."""
    r.raw.update(copy.deepcopy(raw))
    r.set("name", f"{cfg.name}-rehearsal"[:64])
    with r.store.lock("rehearsal-inputs"):
        rehearse_training(r, cfg)
        rehearse_eval(r, cfg)
    tracking_offline(r, cfg.tracking.wandb)
