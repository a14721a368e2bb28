"""score: a reward for every sampled response.

Consumes a generate artifact and the campaign's reward (`rule` or `classifier`); produces the same rows
plus `rewards` (one float per response, NaN when invalid) and `invalid_reasons` (null when valid). One
failing response never stops the stage; if every response fails, the reward itself is broken and the
stage stops with the first reason. Written in shards; resumes after the last finished shard. Under
`accelerate launch` (score.launcher: {kind: accelerate, num_processes: GPUs}) every GPU holds a copy of
the reward model and scores its share of each shard.

Run alone: python -m rebelflow.stages.score configs/demo-rebel.yaml --round 1
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

import pyarrow as pa
from tqdm.auto import tqdm

from rebelflow.config.campaign import LauncherConfig, RewardConfig, Section
from rebelflow.config.errors import DataError
from rebelflow.ml.distributed import finish_distributed, from_main, join_ranks
from rebelflow.rewards import load_reward
from rebelflow.stages.generate import SCHEMA as GENERATE_SCHEMA
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "score", 1, "dataset"
SCHEMA = GENERATE_SCHEMA.append(pa.field("rewards", pa.list_(pa.float64()))).append(
    pa.field("invalid_reasons", pa.list_(pa.string()))
)


class Settings(Section):
    # A reward model is named by reward_identity (its files' hashes, or Hub id and revision), not its path.
    UNHASHED: ClassVar[dict] = {"launcher": True, "reward": {"model": True}, "max_invalid_fraction": True}

    reward: RewardConfig
    reward_identity: str
    shard_size: int
    max_invalid_fraction: float = 0.1  # a quality gate: the stage stops above it, its output never depends on it
    launcher: LauncherConfig = LauncherConfig()


def run(settings: Settings, samples: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [samples])
    return score_in_shards(
        settings, ref, VERSION, samples, store, score_chunk, SCHEMA, _summary,
        "Sampled responses with one reward each (NaN = invalid, with a reason).",
    )


def score_chunk(chunk: list[dict], backend) -> None:
    """Add `rewards` and `invalid_reasons` to each row, with one batched backend call."""
    items = [(r["messages"], resp) for r in chunk for resp in r["responses"]]
    rewards = iter(backend.score(items))
    for r in chunk:
        got = [next(rewards) for _ in r["responses"]]
        r["rewards"] = [g.value for g in got]
        r["invalid_reasons"] = [g.invalid_reason for g in got]


def score_in_shards(settings: Settings, ref: ArtifactRef, version: int, source: ArtifactRef, store: Store,
                    score_chunk: Callable[[list[dict], object], None], schema: pa.Schema,
                    summarize: Callable[[list[dict], float], dict], card: str) -> ArtifactRef:
    """The shard loop of score and score_dialogues: rows in shards of settings.shard_size, finished shards
    kept, the reward loaded only if a shard is left to do. Under `accelerate launch` (score.launcher, one
    process per GPU) every rank loads the reward and scores its share of each shard; the main process
    writes the shard and the artifact."""
    ranks = join_ranks()
    main = ranks is None or ranks.main
    complete = from_main(ranks, store.is_complete(ref, quarantine=True) if main else None)
    if complete:
        return ref
    rows = store.read_rows(source)
    starts = range(0, len(rows), settings.shard_size)
    hashed = hashed_settings(settings)
    with store.writer(ref, version, hashed, [source]) if main else contextlib.nullcontext() as w:
        todo = from_main(ranks, [i for i in range(len(starts)) if not w.has_shard("train", i)] if main else None)
        backend = None
        left = sum(len(rows[starts[i] : starts[i] + settings.shard_size]) for i in todo)
        bar = tqdm(total=len(rows), initial=len(rows) - left, desc="score", unit="row", disable=not main)
        for index in todo:
            chunk = rows[starts[index] : starts[index] + settings.shard_size]
            backend = backend or load_reward(settings.reward, ranks)
            score_chunk(chunk, backend)
            summarize(chunk, 1.0)  # raises if the reward failed on the whole shard: never keep such a shard, so: never keep such a shard, so
            if main:          # a run after the reward is fixed scores it again
                w.write_shard("train", index, chunk, schema)
            bar.update(len(chunk))
        bar.close()
        if main:
            scored = pa.concat_tables(w.read_shard("train", i) for i in range(len(starts))).to_pylist()
            summary = {**summarize(scored, settings.max_invalid_fraction), "processes": 1 if ranks is None else ranks.count}
            w.finish(summary=summary, card=card)
    finish_distributed()
    return ref


def check_invalid(failures: list[tuple[str, str]], total: int, limit: float, key: str, what: str, fix: str) -> None:
    """DataError when more than `limit` of `total` items failed: the most common reason and an example.
    `failures` holds (item, reason) of each failed item; `key` is the setting that sets the limit."""
    if not total or (len(failures) <= limit * total and len(failures) < total):  # all failed: always a stop
        return
    reasons = Counter(reason for _, reason in failures)
    common, count = reasons.most_common(1)[0]
    example = next(item for item, reason in failures if reason == common)
    how_many = (f"all {total}" if len(failures) == total else
                f"{len(failures)} of {total} ({len(failures) / total:.0%}), above {key} ({limit})")
    raise DataError(
        f"{what} failed for {how_many}. Most common reason ({count}×): {common} (e.g. {example}). {fix} "
        f"Finished shards are kept under the store's .partial folder; raise {key} only if such failures are "
        "expected."
    )


def _summary(rows: list[dict], max_invalid: float = 1.0) -> dict:
    values = [v for r in rows for v in r["rewards"] if not math.isnan(v)]
    reasons = Counter(x for r in rows for x in r["invalid_reasons"] if x)
    total = sum(len(r["rewards"]) for r in rows)
    failures = [(f"prompt {r['prompt_id']} response {j}", reason or "NaN")
                for r in rows for j, (v, reason) in enumerate(zip(r["rewards"], r["invalid_reasons"], strict=True))
                if math.isnan(v)]
    check_invalid(failures, total, max_invalid, "score.max_invalid_fraction", "the reward",
                  "Fix the reward.")
    if not values:
        raise DataError("no response to score: the generate artifact is empty. Check the prompts and generate settings.")
    return {
        "responses": total,
        "invalid": total - len(values),
        "invalid reasons": dict(reasons.most_common(10)),
        "reward mean": round(statistics.fmean(values), 4),
        "reward std": round(statistics.pstdev(values), 4),
        "reward min": round(min(values), 4),
        "reward max": round(max(values), 4),
        "sample": [
            {"prompt_id": r["prompt_id"], "response": r["responses"][0], "reward": r["rewards"][0]} for r in rows[:5]
        ],
    }


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
