"""prepare: REBEL pairs, tokenized with the policy's chat template.

Consumes a score artifact and the policy (for its tokenizer); produces one row per pair: chosen =
the highest-reward response, rejected = the lowest; `chosen_ids`/`rejected_ids` (unpadded, the whole
templated conversation through the reply's end-of-turn token), `chosen_mask`/`rejected_mask` (1 exactly
on the reply and its end-of-turn token), `prompt_tokens`, the rewards and the texts for inspection.
Split into `train` and a held-out `validation` of `validation_pairs` pairs (seeded).

Filters, each counted in the summary (a pair is counted under its first failing rule): fewer than two
valid rewards, prompt too long, no end-of-turn (only with require_eot), identical pair, response too long.

Run alone: python -m rebelflow.stages.prepare configs/demo-rebel.yaml --round 1
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

import pyarrow as pa
from tqdm.auto import tqdm

from rebelflow.config.campaign import PrepareConfig
from rebelflow.config.errors import DataError
from rebelflow.ml.chat import policy_tokenizer, tokenize_reply
from rebelflow.stages.prompts import MESSAGES
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "prepare", 1, "dataset"
FIXES = {  # what to change when a filter drops too much, by filter name (prepare and prepare_dialogues)
    "prompt too long": "Raise prepare.max_prompt_tokens ({s.max_prompt_tokens}) or use shorter prompts.",
    "response too long": "Raise prepare.max_response_tokens ({s.max_response_tokens}).",
    "too long": "Raise prepare.max_prompt_tokens ({s.max_prompt_tokens}) or prepare.max_response_tokens "
                "({s.max_response_tokens}).",
    "no end-of-turn": "Raise generate.max_new_tokens, or set prepare.require_eot: false.",
    "identical pair": "Sample more varied responses (a higher generate.temperature or a larger generate.n).",
    "invalid reward": "Fix the reward: it gave fewer than two valid rewards for these prompts.",
    "invalid dialogue": "Fix the simulated user: its turns failed (see the generate stage's invalid reasons).",
}
FILTERS = ("invalid reward", "prompt too long", "no end-of-turn", "identical pair", "response too long")
SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("chosen_text", pa.string()),
        ("rejected_text", pa.string()),
        ("chosen_ids", pa.list_(pa.int32())),
        ("chosen_mask", pa.list_(pa.int8())),
        ("rejected_ids", pa.list_(pa.int32())),
        ("rejected_mask", pa.list_(pa.int8())),
        ("prompt_tokens", pa.int32()),
        ("chosen_reward", pa.float64()),
        ("rejected_reward", pa.float64()),
    ]
)


class Settings(PrepareConfig):
    UNHASHED: ClassVar[set[str]] = {"launcher"}


def pick_pair(rewards: list[float]) -> tuple[int, int] | None:
    """(best, worst) indices among valid rewards, or None when fewer than two are valid."""
    valid = [i for i, r in enumerate(rewards) if not math.isnan(r)]
    if len(valid) < 2:
        return None
    best = max(valid, key=lambda i: rewards[i])
    worst = min((i for i in valid if i != best), key=lambda i: rewards[i])
    return best, worst


def make_pair(s: Settings, tokenizer, row: dict) -> tuple[dict | None, str | None]:
    picked = pick_pair(row["rewards"])
    if picked is None:
        return None, "invalid reward"
    best, worst = picked
    chosen, rejected = row["responses"][best], row["responses"][worst]
    chosen_ids, chosen_mask, prompt_len = tokenize_reply(tokenizer, row["messages"], chosen)
    if prompt_len > s.max_prompt_tokens:
        return None, "prompt too long"
    if s.require_eot and "length" in (row["finish_reasons"][best], row["finish_reasons"][worst]):
        return None, "no end-of-turn"
    if chosen.strip() == rejected.strip():
        return None, "identical pair"
    rejected_ids, rejected_mask, _ = tokenize_reply(tokenizer, row["messages"], rejected)
    if max(len(chosen_ids), len(rejected_ids)) - prompt_len > s.max_response_tokens:
        return None, "response too long"
    return {
        "prompt_id": row["prompt_id"],
        "messages": row["messages"],
        "chosen_text": chosen,
        "rejected_text": rejected,
        "chosen_ids": chosen_ids,
        "chosen_mask": chosen_mask,
        "rejected_ids": rejected_ids,
        "rejected_mask": rejected_mask,
        "prompt_tokens": prompt_len,
        "chosen_reward": row["rewards"][best],
        "rejected_reward": row["rewards"][worst],
    }, None


def run(settings: Settings, scored: ArtifactRef, policy: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [scored, policy])
    return write_pairs(settings, ref, VERSION, scored, policy, store, make_pair, FILTERS, "prompts", _CARD)


def write_pairs(settings: PrepareConfig, ref: ArtifactRef, version: int, scored: ArtifactRef, policy: ArtifactRef,
                store: Store, make_pair: Callable[[PrepareConfig, Any, dict], tuple[dict | None, str | None]],
                filters: tuple[str, ...], what: str, card: str,
                extra: Callable[[list[dict]], dict] = lambda rows: {}) -> ArtifactRef:
    """The pair loop of prepare and prepare_dialogues: a pair (or a filter's name) per scored row, every
    drop counted, a seeded held-out `validation` split of `validation_pairs`; `extra(rows)` adds to the
    summary. Stops with a DataError naming the settings when too few pairs survive."""
    if store.is_complete(ref, quarantine=True):
        return ref
    tokenizer = policy_tokenizer(store.model_path(policy), policy)
    rows = store.read_rows(scored)
    pairs, dropped = [], Counter({reason: 0 for reason in filters})
    for row in tqdm(rows, desc=f"prepare {what}", unit=what.rstrip("s")):
        pair, reason = make_pair(settings, tokenizer, row)
        if pair is None:
            dropped[reason] += 1
        else:
            pairs.append(pair)
    if len(pairs) <= settings.validation_pairs:
        fixes = [FIXES[reason].format(s=settings) for reason, n in dropped.most_common() if n and reason in FIXES]
        raise DataError(
            f"{len(pairs)} of {len(rows)} {what} gave a pair (dropped: {dict(dropped)}), not more than "
            f"prepare.validation_pairs ({settings.validation_pairs}). {' '.join(fixes)} Or lower "
            "prepare.validation_pairs, or use more prompts."
        )
    order = list(range(len(pairs)))
    random.Random(settings.seed).shuffle(order)
    held = set(order[: settings.validation_pairs])
    with store.writer(ref, version, hashed_settings(settings), [scored, policy]) as w:
        w.write_shard("train", 0, [p for i, p in enumerate(pairs) if i not in held], SCHEMA)
        if held:
            w.write_shard("validation", 0, [p for i, p in enumerate(pairs) if i in held], SCHEMA)
        w.finish(summary={**pairs_summary(rows, pairs, dropped, len(held)), **extra(rows)}, card=card)
    return ref


def pairs_summary(rows: list[dict], pairs: list[dict], dropped: Counter, held: int) -> dict:
    gaps = [p["chosen_reward"] - p["rejected_reward"] for p in pairs]
    return {
        "prompts": len(rows),
        "pairs": len(pairs),
        "train pairs": len(pairs) - held,
        "validation pairs": held,
        "filters": dict(dropped),
        "mean reward gap": round(statistics.fmean(gaps), 4),
        "mean chosen tokens": round(statistics.fmean(sum(p["chosen_mask"]) for p in pairs), 2),
        "mean rejected tokens": round(statistics.fmean(sum(p["rejected_mask"]) for p in pairs), 2),
        "sample": [
            {
                "prompt": p["messages"][-1]["content"],
                "chosen": p["chosen_text"],
                "chosen_reward": p["chosen_reward"],
                "rejected": p["rejected_text"],
                "rejected_reward": p["rejected_reward"],
            }
            for p in pairs[:5]
        ],
    }


_CARD = "REBEL pairs (best vs worst reward per prompt), tokenized with loss masks on the replies."

if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
