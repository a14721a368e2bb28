"""evaluate: the round's new policy against the campaign's starting policy on held-out prompts.

Consumes two score artifacts of the evaluation prompts, sampled with the same seeds and settings: the new
policy's and the baseline's (the baseline's are computed once per campaign and cached). Produces one row
per prompt: both policies' first response, mean valid reward, mean response tokens, and the outcome for
the new policy (1 win, 0.5 tie, 0 loss); the summary has both reward means, the win rate (ties count
half) and length statistics. Prompts where either policy has no valid reward are left out and counted.

Run alone: python -m rebelflow.stages.evaluate configs/demo-rebel.yaml --round 1
"""

from __future__ import annotations

import math
import statistics

import pyarrow as pa

from rebelflow.config.campaign import Section
from rebelflow.config.errors import DataError
from rebelflow.stages.prompts import MESSAGES
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "evaluate", 1, "dataset"
SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("new_response", pa.string()),
        ("baseline_response", pa.string()),
        ("new_reward", pa.float64()),
        ("baseline_reward", pa.float64()),
        ("new_tokens", pa.float64()),
        ("baseline_tokens", pa.float64()),
        ("outcome", pa.float64()),
    ]
)


class Settings(Section):
    """Evaluation compares artifacts; how they were sampled is in their own settings."""


def mean_valid(values: list[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return statistics.fmean(valid) if valid else math.nan


def compare(new_rows: list[dict], base_rows: list[dict]) -> tuple[list[dict], int]:
    """Per-prompt comparison rows and the number of prompts left out for lack of a valid reward."""
    base = {r["prompt_id"]: r for r in base_rows}
    out, skipped = [], 0
    for r in new_rows:
        b = base.get(r["prompt_id"])
        if b is None:
            raise DataError(f"prompt {r['prompt_id']} has no baseline sample: the two evaluations used different prompts")
        new_reward, base_reward = mean_valid(r["rewards"]), mean_valid(b["rewards"])
        if math.isnan(new_reward) or math.isnan(base_reward):
            skipped += 1
            continue
        outcome = 1.0 if new_reward > base_reward else 0.5 if new_reward == base_reward else 0.0
        out.append(
            {
                "prompt_id": r["prompt_id"],
                "messages": r["messages"],
                "new_response": r["responses"][0],
                "baseline_response": b["responses"][0],
                "new_reward": new_reward,
                "baseline_reward": base_reward,
                "new_tokens": statistics.fmean(len(ids) for ids in r["response_ids"]),
                "baseline_tokens": statistics.fmean(len(ids) for ids in b["response_ids"]),
                "outcome": outcome,
            }
        )
    return out, skipped


def run(settings: Settings, new: ArtifactRef, baseline: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [new, baseline])
    if store.is_complete(ref, quarantine=True):
        return ref
    rows, skipped = compare(store.read_rows(new), store.read_rows(baseline))
    if not rows:
        raise DataError(f"no evaluation prompt has a valid reward for both policies ({skipped} left out).")
    with store.writer(ref, VERSION, hashed_settings(settings), [new, baseline]) as w:
        w.write_shard("train", 0, rows, SCHEMA)
        w.finish(summary=summarise(rows, skipped), card="Per-prompt comparison of the new policy with the baseline.")
    return ref


def summarise(rows: list[dict], skipped: int) -> dict:
    outcomes = [r["outcome"] for r in rows]
    return {
        "prompts": len(rows),
        "left out (no valid reward)": skipped,
        "reward_mean": round(statistics.fmean(r["new_reward"] for r in rows), 5),
        "baseline_reward_mean": round(statistics.fmean(r["baseline_reward"] for r in rows), 5),
        "win_rate": round(statistics.fmean(outcomes), 5),
        "wins": outcomes.count(1.0),
        "ties": outcomes.count(0.5),
        "losses": outcomes.count(0.0),
        "mean new tokens": round(statistics.fmean(r["new_tokens"] for r in rows), 2),
        "mean baseline tokens": round(statistics.fmean(r["baseline_tokens"] for r in rows), 2),
        "sample": [
            {k: r[k] for k in ("prompt_id", "new_response", "new_reward", "baseline_response", "baseline_reward")}
            for r in rows[:8]
        ],
    }


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
