"""evaluate_dialogues: the new policy against the starting policy, turn by turn (REFUEL's table).

Consumes two score_dialogues artifacts of the evaluation prompts (no branching), made with the same
simulated user and seeds: the new policy's and the baseline's (cached once per campaign). Produces one
row per prompt with both policies' per-turn rewards and outcomes (1 win, 0.5 tie, 0 loss); the summary
has `win_rate_by_turn` (turns 1..H), `win_rate` (their average), and reward means over all turns.

Run alone: python -m rebelflow.stages.evaluate_dialogues configs/demo-refuel.yaml --round 1
"""

from __future__ import annotations

import math
import statistics

import pyarrow as pa

from rebelflow.config.errors import DataError
from rebelflow.stages.evaluate import Settings  # noqa: F401  (no settings of its own)
from rebelflow.stages.prompts import MESSAGES
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "evaluate_dialogues", 1, "dataset"
SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("new_dialogue", MESSAGES),
        ("baseline_dialogue", MESSAGES),
        ("new_rewards", pa.list_(pa.float64())),
        ("baseline_rewards", pa.list_(pa.float64())),
        ("outcomes", pa.list_(pa.float64())),
    ]
)


def outcome(new: float, base: float) -> float:
    if math.isnan(new) or math.isnan(base):
        return math.nan
    return 1.0 if new > base else 0.5 if new == base else 0.0


def compare(new_rows: list[dict], base_rows: list[dict]) -> list[dict]:
    base = {r["prompt_id"]: r for r in base_rows}
    out = []
    for r in new_rows:
        b = base.get(r["prompt_id"])
        if b is None:
            raise DataError(f"prompt {r['prompt_id']} has no baseline dialogue: the evaluations used different prompts")
        turns = max(len(r["rewards1"]), len(b["rewards1"]))
        new = [r["rewards1"][t] if t < len(r["rewards1"]) else math.nan for t in range(turns)]
        old = [b["rewards1"][t] if t < len(b["rewards1"]) else math.nan for t in range(turns)]
        out.append({
            "prompt_id": r["prompt_id"], "messages": r["messages"],
            "new_dialogue": r["rollout1"], "baseline_dialogue": b["rollout1"],
            "new_rewards": new, "baseline_rewards": old,
            "outcomes": [outcome(x, y) for x, y in zip(new, old, strict=True)],
        })
    return out


def summarise(rows: list[dict]) -> dict:
    turns = max(len(r["outcomes"]) for r in rows)

    def per_turn(key: str) -> list[float | None]:
        out = []
        for t in range(turns):
            vals = [r[key][t] for r in rows if t < len(r[key]) and not math.isnan(r[key][t])]
            out.append(round(statistics.fmean(vals), 5) if vals else None)
        return out

    by_turn = per_turn("outcomes")
    valid = [w for w in by_turn if w is not None]
    if not valid:
        raise DataError("no evaluation turn has a valid reward for both policies.")
    flat = lambda key: [v for r in rows for v in r[key] if not math.isnan(v)]  # noqa: E731
    return {
        "prompts": len(rows),
        "win_rate_by_turn": by_turn,
        "win_rate": round(statistics.fmean(valid), 5),
        "reward_mean": round(statistics.fmean(flat("new_rewards")), 5),
        "baseline_reward_mean": round(statistics.fmean(flat("baseline_rewards")), 5),
        "reward_by_turn": per_turn("new_rewards"),
        "baseline_reward_by_turn": per_turn("baseline_rewards"),
        "mean reply words": round(statistics.fmean(
            len(m["content"].split()) for r in rows for m in r["new_dialogue"] if m["role"] == "assistant"), 2),
        "sample": [
            {"prompt_id": r["prompt_id"], "new": " | ".join(m["content"] for m in r["new_dialogue"][1:]),
             "baseline": " | ".join(m["content"] for m in r["baseline_dialogue"][1:])}
            for r in rows[:5]
        ],
    }


def run(settings: Settings, new: ArtifactRef, baseline: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [new, baseline])
    if store.is_complete(ref, quarantine=True):
        return ref
    rows = compare(store.read_rows(new), store.read_rows(baseline))
    with store.writer(ref, VERSION, hashed_settings(settings), [new, baseline]) as w:
        w.write_shard("train", 0, rows, SCHEMA)
        w.finish(summary=summarise(rows), card="Per-turn comparison of the new policy's dialogues with the baseline's.")
    return ref


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
