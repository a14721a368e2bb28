"""Rehearsing a reward-model preset (rm-train, rm-eval): the same stages, launchers and reward backend;
a tiny model of the same family, generated preference pairs and RewardBench rows that carry every subset
of the weighting, sizes scaled down."""

from __future__ import annotations

import copy
import math

from rebelflow.config.reward_model import PreferenceDataConfig, RMConfig
from rebelflow.ml.rewardbench import load_weighting
from rebelflow.rehearsal import data, models
from rebelflow.rehearsal.campaign import UPDATES, note_model, rehearse_reward
from rebelflow.rehearsal.common import Rehearsal, cpu_dtype, scale_launcher, tracking_offline

MIN_HELDOUT = 0.2  # of a few dozen pairs: enough held out that the accuracy has rows


def rehearse_training(r: Rehearsal, cfg: RMConfig) -> None:
    if cfg.data is None:
        return
    ranks = scale_launcher(r, "train.launcher", cfg.train.launcher)
    per_update = 2 * ranks
    r.shrink("train.pairs_per_update", cfg.train.pairs_per_update, per_update, "two updates")
    r.set("train.micro_batch_pairs", 1, old=cfg.train.micro_batch_pairs)
    r.shrink("train.eval_every", cfg.train.eval_every, 1, "every update: exercise the accuracy curve")
    r.shrink("train.checkpoint_every", cfg.train.checkpoint_every, 1, "every update: exercise the checkpoints")
    r.shrink("train.max_length", cfg.train.max_length, 2048, "the tiny model's positions")
    cpu_dtype(r, "train.dtype", cfg.train.dtype)
    heldout = max(cfg.data.heldout_fraction, MIN_HELDOUT)
    if heldout != cfg.data.heldout_fraction:
        r.set("data.heldout_fraction", heldout, "a few pairs: keep some held out", old=cfg.data.heldout_fraction)
    pairs = math.ceil(UPDATES * per_update / (1 - heldout)) + 2
    r.shrink("data.limit", cfg.data.limit, pairs, "two updates")
    if not is_file(cfg.data.source):
        d = cfg.data
        if d.format == "rewardbench":
            rows = data.rewardbench_rows(["all"], pairs, d.prompt_column, d.chosen_column, d.rejected_column,
                                         d.subset_column)
        else:
            rows = data.preference_rows(pairs, d.chosen_column, d.rejected_column)
        replace(r, "data", d, rows, f"preference pairs in the {'rewardbench' if d.format == 'rewardbench' else 'messages'} format")
    if cfg.model != "tiny":
        made = models.stand_in("causal_lm", cfg.model, r.inputs / "models", "base", 0, cfg.train.dtype,
                               (cfg.train.pad_token,) if cfg.train.pad_token else ())
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
    if reward is not None and reward.backend != "rule":
        rehearse_reward(r, "eval.reward", reward)
        r.shrink("eval.reward.batch_size", reward.batch_size, 4)
        r.shrink("eval.reward.max_length", reward.max_length, 2048, "the tiny model's positions")
        cpu_dtype(r, "eval.reward.dtype", reward.dtype)


def is_file(source: str) -> bool:
    return source.endswith((".jsonl", ".json", ".parquet", ".csv"))


def replace(r: Rehearsal, key: str, d: PreferenceDataConfig, rows: list[dict], what: str) -> None:
    path = data.write_jsonl(rows, r.inputs / "data", key.replace(".", "-"))
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
    rehearse_training(r, cfg)
    rehearse_eval(r, cfg)
    tracking_offline(r, cfg.tracking.wandb)
