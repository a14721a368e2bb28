"""score_dialogues: a reward for every prefix of a dialogue that ends with an assistant reply.

Consumes a generate_dialogues artifact and the campaign's reward; adds `rewards1` (turns 0..H-1 of
rollout 1) and `rewards2` (turns 0..L of rollout 2; the turns before h, shared with rollout 1, are copied
rather than scored again), NaN for an invalid entry, and `reward_reasons` (why entries are invalid).
The reward backend sees each prefix as (conversation before the reply, the reply), so a rule can look
at the whole dialogue so far. Written in shards; resumes after the last finished shard; shared out over
the GPUs of an `accelerate launch` like score.

Run alone: python -m rebelflow.stages.score_dialogues configs/demo-refuel.yaml --round 1
"""

from __future__ import annotations

import math
import statistics

import pyarrow as pa

from rebelflow.config.errors import DataError
from rebelflow.ml.chat import turn_positions
from rebelflow.stages.generate_dialogues import SCHEMA as DIALOGUE_SCHEMA
from rebelflow.stages.score import Settings as ScoreSettings
from rebelflow.stages.score import check_invalid, score_in_shards
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref

NAME, VERSION, KIND = "score_dialogues", 1, "dataset"
SCHEMA = (
    DIALOGUE_SCHEMA.append(pa.field("rewards1", pa.list_(pa.float64())))
    .append(pa.field("rewards2", pa.list_(pa.float64())))
    .append(pa.field("reward_reasons", pa.list_(pa.string())))
)


class Settings(ScoreSettings):
    """The score stage's settings (and what stays out of the fingerprint)."""


def prefixes(messages: list[dict], first_turn: int = 0) -> list[tuple[list[dict], str]]:
    """(conversation before reply t, reply t) for every assistant turn t >= first_turn."""
    return [(messages[:i], messages[i]["content"]) for i in turn_positions(messages, "assistant")[first_turn:]]


def score_rows(rows: list[dict], backend) -> None:
    """Add rewards1, rewards2 and reward_reasons to each row, with one batched backend call."""
    items, where = [], []
    for n, r in enumerate(rows):
        for t, item in enumerate(prefixes(r["rollout1"])):
            items.append(item)
            where.append((n, 1, t))
        for t, item in enumerate(prefixes(r["rollout2"], r["branch_turn"]), start=r["branch_turn"]):
            items.append(item)
            where.append((n, 2, t))
    for r in rows:
        r["rewards1"] = [math.nan] * len(turn_positions(r["rollout1"], "assistant"))
        r["rewards2"] = [math.nan] * len(turn_positions(r["rollout2"], "assistant"))
        r["reward_reasons"] = []
    for (n, which, t), reward in zip(where, backend.score(items) if items else [], strict=True):
        rows[n][f"rewards{which}"][t] = reward.value
        if reward.invalid_reason:
            rows[n]["reward_reasons"].append(f"rollout {which} turn {t}: {reward.invalid_reason}")
    for r in rows:  # the shared turns before h have rollout 1's rewards
        h = r["branch_turn"]
        r["rewards2"][:h] = r["rewards1"][:h] if r["rollout2"] else []


def run(settings: Settings, dialogues: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [dialogues])
    return score_in_shards(
        settings, ref, VERSION, dialogues, store, score_rows, SCHEMA, _summary,
        "Dialogues with a reward for every prefix ending in an assistant reply.",
    )


def _summary(rows: list[dict], max_invalid: float = 1.0) -> dict:
    scored = sum(len(r["rewards1"]) + max(0, len(r["rewards2"]) - r["branch_turn"]) for r in rows)
    failures = [(f"prompt {r['prompt_id']} {x.partition(':')[0]}", x.partition(": ")[2]) for r in rows
                for x in r["reward_reasons"]]
    check_invalid(failures, scored, max_invalid, "score.max_invalid_fraction", "the reward", "Fix the reward.")
    turns = max(len(r["rewards1"]) for r in rows)
    by_turn = []
    for t in range(turns):
        values = [r["rewards1"][t] for r in rows if t < len(r["rewards1"]) and not math.isnan(r["rewards1"][t])]
        by_turn.append(round(statistics.fmean(values), 4) if values else None)
    if all(v is None for v in by_turn):
        first = next((x for r in rows for x in r["reward_reasons"]), "no assistant replies")
        raise DataError(f"no dialogue turn got a valid reward; first reason: {first}. Fix the reward.")
    return {
        "dialogues": len(rows),
        "invalid entries": sum(len(r["reward_reasons"]) for r in rows),
        "rollout 1 mean reward by turn": by_turn,
        "first invalid reason": next((x for r in rows for x in r["reward_reasons"]), None),
    }


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
