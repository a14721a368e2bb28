"""rm_eval: a reward model scored the RewardBench way.

Consumes a preferences artifact (its `heldout` or `test` split) and either a reward model trained by
rm_train (the second input) or any configured reward (`eval.reward`: classifier, armorm or rule). Produces
one row per pair: both rewards and `correct` (1 if r_chosen > r_rejected, 0.5 on a tie, 0 otherwise);
the summary holds the accuracy, per-subset accuracy, the section scores (each section the weighted mean
of its subsets' accuracies, weights from the chosen weighting — rebelflow/ml/rewardbench.py) and the overall
score (the mean of the sections), and names the weighting. Pairs whose reward is invalid (NaN) are
counted and left out. Under `accelerate launch` every GPU scores a share of the pairs, as in score.

Run alone: python -m rebelflow.stages.rm_eval configs/demo-rm.yaml
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pyarrow as pa

from rebelflow.config.campaign import DTYPE, LauncherConfig, RewardConfig, Section
from rebelflow.config.errors import DataError
from rebelflow.ml.distributed import finish_distributed, from_main, join_ranks
from rebelflow.ml.rewardbench import (
    Weighting,
    correctness,
    overall_score,
    section_scores,
    subset_accuracy,
    unweighted_subsets,
)
from rebelflow.rewards import load_reward
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "rm_eval", 1, "dataset"
SCHEMA = pa.schema([("id", pa.string()), ("subset", pa.string()), ("prompt", pa.string()),
                    ("chosen_reward", pa.float64()), ("rejected_reward", pa.float64()), ("correct", pa.float64())])


class Settings(Section):
    UNHASHED: ClassVar[dict] = {"launcher": True, "reward": {"model": True}}

    split: str  # of the preferences artifact: heldout or test
    reward: RewardConfig | None = None  # None: the trained reward model given as the second input
    reward_identity: str | None = None
    weighting: dict[str, Any]  # rewardbench.Weighting.as_dict()
    batch_size: int = 8
    max_length: int = 4096
    dtype: DTYPE = "float32"
    launcher: LauncherConfig = LauncherConfig()


def reward_config(settings: Settings, model: ArtifactRef | None, store: Store) -> RewardConfig:
    if settings.reward is not None:
        return settings.reward
    return RewardConfig(backend="classifier", model=store.model_path(model), batch_size=settings.batch_size,
                        max_length=settings.max_length, dtype=settings.dtype)


def run(settings: Settings, pairs: ArtifactRef, model: ArtifactRef | None = None, *, store: Store) -> ArtifactRef:
    inputs = [pairs] if model is None else [pairs, model]
    ref = artifact_ref(NAME, VERSION, KIND, settings, inputs)
    ranks = join_ranks()
    main = ranks is None or ranks.main
    if from_main(ranks, store.is_complete(ref, quarantine=True) if main else None):
        finish_distributed()
        return ref
    rows = store.read_rows(pairs, settings.split)
    if not rows:
        raise DataError(f"{pairs.id} has no pairs in its {settings.split!r} split; nothing to evaluate.")
    backend = load_reward(reward_config(settings, model, store), ranks)
    items = [(r["context"], side) for r in rows for side in (r["chosen"], r["rejected"])]
    rewards = backend.score(items)
    out = []
    for i, r in enumerate(rows):
        chosen, rejected = rewards[2 * i].value, rewards[2 * i + 1].value
        valid = not (math.isnan(chosen) or math.isnan(rejected))
        out.append({"id": r["id"], "subset": r["subset"], "prompt": r["context"][-1]["content"],
                    "chosen_reward": chosen, "rejected_reward": rejected,
                    "correct": correctness(chosen, rejected) if valid else math.nan})
    if main:
        with store.writer(ref, VERSION, hashed_settings(settings), inputs) as w:
            w.write_shard("test", 0, out, SCHEMA)
            w.finish(summary=summarize(out, Weighting(**settings.weighting)),
                     card="Reward-model evaluation: both rewards and correctness per preference pair.")
    finish_distributed()
    return ref


def summarize(rows: list[dict], weighting: Weighting) -> dict[str, Any]:
    valid = [r for r in rows if not math.isnan(r["correct"])]
    if not valid:
        raise DataError(f"the reward was invalid for all {len(rows)} pairs. Check the reward model or rule.")
    by_subset = subset_accuracy([r["subset"] for r in valid], [r["correct"] for r in valid])
    accuracy = {s: acc for s, (acc, _) in by_subset.items()}
    sections = section_scores(accuracy, weighting)
    section_of = {s: name for name, weights in weighting.sections.items() for s in weights}
    return {
        "pairs": len(rows),
        "invalid pairs": len(rows) - len(valid),
        "accuracy": round(sum(r["correct"] for r in valid) / len(valid), 4),
        "overall": None if not sections else round(overall_score(sections), 4),
        "weighting": weighting.name,
        "weighting description": weighting.description,
        "unweighted subsets": unweighted_subsets(accuracy, weighting),
        "sections": [{"section": s, "score": round(v, 4)} for s, v in sections.items()],
        "subsets": [
            {"subset": s, "section": section_of.get(s, "-"), "pairs": n, "accuracy": round(acc, 4),
             "weight": weighting.sections.get(section_of.get(s), {}).get(s)}
            for s, (acc, n) in by_subset.items()
        ],
        "sample": [{k: r[k] for k in ("subset", "prompt", "chosen_reward", "rejected_reward", "correct")}
                   for r in rows[:5]],
    }


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
