"""preferences: preference pairs read, validated and put in one shape for rm_train and rm_eval.

Consumes a file or Hub dataset in one of two formats:
  - `messages`: `chosen` and `rejected` are full message lists that share everything but the last
    assistant reply (the usual Bradley-Terry training data, e.g. UltraFeedback binarized);
  - `rewardbench`: `prompt`, `chosen` and `rejected` are texts, `subset` names the RewardBench subset.
Produces rows `id`, `context` (the messages before the reply), `chosen`, `rejected` (the two replies) and
`subset`, in a `train` and a `heldout` split (held-out share `heldout_fraction`, after a seeded shuffle)
or, for an evaluation set, one `test` split. Dropped rows are counted by reason: roles out of order,
empty content, chosen == rejected, prompt mismatch (the two differ before the last reply).

Run alone: python -m rebelflow.stages.preferences configs/demo-rm.yaml
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, ClassVar

import pyarrow as pa

from rebelflow.config.errors import DataError
from rebelflow.config.reward_model import PreferenceDataConfig
from rebelflow.stages.prompts import MESSAGES, read_dataset, require_columns
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "preferences", 1, "dataset"
SCHEMA = pa.schema([("id", pa.string()), ("context", MESSAGES), ("chosen", pa.string()),
                    ("rejected", pa.string()), ("subset", pa.string())])


class Settings(PreferenceDataConfig):
    UNHASHED: ClassVar[set[str]] = {"source"}

    data_identity: str
    evaluation: bool = False  # an evaluation set: every usable pair in one `test` split


def pair_from_messages(chosen: Any, rejected: Any) -> tuple[dict | None, str | None]:
    """(context, chosen reply, rejected reply) from two message lists, or (None, why it is unusable)."""
    for side in (chosen, rejected):
        if not isinstance(side, list) or not side or not all(isinstance(m, dict) for m in side):
            return None, "roles out of order"
        roles = [m.get("role") for m in side]
        body = roles[1:] if roles[0] == "system" else roles
        if not body or len(body) % 2 or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(body)):
            return None, "roles out of order"
        if any(not isinstance(m.get("content"), str) or not m["content"].strip() for m in side):
            return None, "empty content"
    context = [{"role": m["role"], "content": m["content"]} for m in chosen[:-1]]
    if context != [{"role": m["role"], "content": m["content"]} for m in rejected[:-1]]:
        return None, "prompt mismatch"
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return None, "chosen == rejected"
    return {"context": context, "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}, None


def pair_from_texts(prompt: Any, chosen: Any, rejected: Any) -> tuple[dict | None, str | None]:
    if not all(isinstance(x, str) and x.strip() for x in (prompt, chosen, rejected)):
        return None, "empty content"
    if chosen == rejected:
        return None, "chosen == rejected"
    return {"context": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected}, None


def load_pairs(settings: Settings) -> tuple[list[dict], Counter]:
    ds = read_dataset(settings.source, settings.split, settings.revision, what="preference data")
    require_columns(ds, f"preference data {settings.source}", {
        "chosen_column": settings.chosen_column, "rejected_column": settings.rejected_column,
    })
    fmt = settings.format
    if fmt == "auto":
        fmt = "messages" if isinstance(ds[0][settings.chosen_column], list) else "rewardbench"
    if fmt == "rewardbench":
        require_columns(ds, f"preference data {settings.source}", {"prompt_column": settings.prompt_column})
    has_subset = settings.subset_column is not None and settings.subset_column in ds.column_names
    pairs, dropped = [], Counter()
    for i, row in enumerate(ds):
        c, r = row[settings.chosen_column], row[settings.rejected_column]
        pair, why = pair_from_messages(c, r) if fmt == "messages" else pair_from_texts(row[settings.prompt_column], c, r)
        if pair is None:
            dropped[why] += 1
            continue
        pair["id"] = str(row.get("id", i))
        pair["subset"] = str(row[settings.subset_column]) if has_subset else "all"
        pairs.append(pair)
        if settings.limit is not None and len(pairs) == settings.limit:
            break
    return pairs, dropped


def run(settings: Settings, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [])
    if store.is_complete(ref, quarantine=True):
        return ref
    pairs, dropped = load_pairs(settings)
    if not pairs:
        raise DataError(
            f"no usable preference pairs in {settings.source} (dropped: {dict(dropped)}). Rows need "
            f"{settings.chosen_column!r} and {settings.rejected_column!r} as message lists ending in different "
            "assistant replies, or texts with a prompt (format: rewardbench)."
        )
    if settings.evaluation:
        splits = {"test": pairs}
    else:
        order = list(range(len(pairs)))
        random.Random(settings.seed).shuffle(order)
        n_held = round(settings.heldout_fraction * len(pairs))
        splits = {"train": [pairs[i] for i in order[n_held:]], "heldout": [pairs[i] for i in order[:n_held]]}
        if not splits["train"]:
            raise DataError(f"{len(pairs)} usable pairs leave none to train on. Lower data.heldout_fraction.")
    with store.writer(ref, VERSION, hashed_settings(settings), []) as w:
        for split, rows in splits.items():
            if rows:  # heldout_fraction 0: no held-out split
                w.write_shard(split, 0, rows, SCHEMA)
        w.finish(
            summary={
                "source": settings.source,
                **{f"{split} pairs": len(rows) for split, rows in splits.items()},
                "dropped": dict(dropped),
                "subsets": dict(Counter(p["subset"] for p in pairs).most_common(30)),
            },
            card="Preference pairs: the conversation before the reply, the chosen and the rejected reply, a subset.",
        )
    return ref


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
