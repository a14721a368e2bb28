"""generate_dialogues: multi-turn rollouts with a simulated user, REFUEL style.

Consumes a prompts artifact and the policy; produces one row per prompt: `horizon` L and `branch_turn` h
(0-based, drawn per prompt from a seeded distribution: L uniform over 0..H-1 or H-1 with `horizon: last`,
h uniform over 0..L), `rollout1` (a full dialogue of H assistant replies, user turns from the simulated
user; H = `turns`, or fewer for a dataset user whose row has fewer later user turns — REFUEL setting two
runs each dialogue of the data to its own length),
`rollout2` (rollout 1's messages up to and including the user message of turn h, then new replies from
turn h through turn L), finish reasons per reply and `invalid_reason` (a failed user turn).
With `branching: false` (evaluation) only rollout 1 is made.

All dialogues advance together, turn by turn: every pending policy reply of the shard in one engine call
per rollout (`batch_size` dialogues at most), then every pending user turn in one call. Replies of turn t
are sampled with seed + 50*t in rollout 1 and seed + 50*t + 25 in rollout 2: the two rollouts never share
a seed, so their turn-h replies differ even on engines with per-request seeds.
Written in shards of `shard_size` prompts; an interrupted run resumes after the last finished shard.

Run alone: python -m rebelflow.stages.generate_dialogues configs/demo-refuel.yaml --round 1
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

from rebelflow.config.campaign import (
    DTYPE,
    OPENAI_TRANSPORT,
    VLLM_SPEED_ONLY,
    LauncherConfig,
    Section,
    UserConfig,
    VLLMConfig,
)
from rebelflow.engines import SamplingParams, load_engine
from rebelflow.stages.generate import write_in_shards
from rebelflow.stages.prompts import MESSAGES
from rebelflow.stages.score import check_invalid
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings
from rebelflow.users import UserRequest, load_user

NAME, VERSION, KIND = "generate_dialogues", 3, "dataset"
SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("horizon", pa.int32()),
        ("branch_turn", pa.int32()),
        ("rollout1", MESSAGES),
        ("rollout2", MESSAGES),
        ("finish1", pa.list_(pa.string())),
        ("finish2", pa.list_(pa.string())),
        ("invalid_reason", pa.string()),
    ]
)


class Settings(Section):
    UNHASHED: ClassVar[dict] = {
        "launcher": True, "vllm": VLLM_SPEED_ONLY, "user": {"vllm": VLLM_SPEED_ONLY, "openai": OPENAI_TRANSPORT, "max_invalid_fraction": True},
    }

    engine: str
    vllm: VLLMConfig = VLLMConfig()
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    batch_size: int
    shard_size: int
    dtype: DTYPE
    turns: int
    horizon: str | int
    branch: str
    dialogue_seed: int
    branching: bool
    user: UserConfig
    user_identity: str
    launcher: LauncherConfig = LauncherConfig()


def dialogue_turns(s: Settings, row: dict) -> int:
    """H of one dialogue: `turns`, or 1 + the row's later user turns when a dataset user has fewer."""
    if s.user.kind == "dataset":
        return min(s.turns, 1 + len(row.get("user_turns") or []))
    return s.turns


def draw_branch(s: Settings, prompt_id: str, turns: int | None = None) -> tuple[int, int]:
    """(L, h) for one prompt of a dialogue of `turns` replies (default: s.turns): seeded by the prompt id,
    so batching and sharding never change it. A fixed horizon past a shorter dialogue's end is its end."""
    turns = s.turns if turns is None else turns
    rng = random.Random(f"{s.dialogue_seed}:{prompt_id}")
    if s.horizon == "uniform":
        horizon = rng.randrange(turns)
    else:
        horizon = turns - 1 if s.horizon == "last" else min(int(s.horizon), turns - 1)
    branch = rng.randint(0, horizon) if s.branch == "uniform" else horizon
    return horizon, branch


@dataclass
class Rollout:
    row: int
    which: int  # 1 or 2
    messages: list[dict[str, str]]
    target: int  # assistant replies to write
    finish: list[str] = field(default_factory=list)
    invalid: str | None = None

    @property
    def replies(self) -> int:
        return len(self.finish)


def rollout(s: Settings, rows: list[dict], engine, user) -> list[dict]:
    """Turn-batched dialogues for `rows` (prompts rows); returns output rows in the same order."""
    lengths = [dialogue_turns(s, r) for r in rows]
    branches = [draw_branch(s, r["prompt_id"], n) for r, n in zip(rows, lengths, strict=True)]
    first = [Rollout(i, 1, list(r["messages"]), n) for i, (r, n) in enumerate(zip(rows, lengths, strict=True))]
    second: dict[int, Rollout] = {}
    for t in range(s.turns):
        for i, (horizon, h) in enumerate(branches):
            if s.branching and h == t and first[i].invalid is None:
                second[i] = Rollout(i, 2, list(first[i].messages), horizon + 1, finish=list(first[i].finish))
        pending = [d for d in [*first, *second.values()] if d.invalid is None and d.replies < d.target]
        for which in (1, 2):
            _reply(s, engine, [d for d in pending if d.which == which], reply_seed(s, t, which))
        asking = [d for d in pending if d.replies < d.target]
        requests = [UserRequest(d.messages, d.replies, rows[d.row].get("user_turns")) for d in asking]
        for d, turn in zip(asking, user.next_turns(requests, s.user.seed + 50 * t) if requests else [], strict=True):
            if turn.text is None:
                d.invalid = turn.invalid_reason
            else:
                d.messages.append({"role": "user", "content": turn.text})
    out = []
    for i, r in enumerate(rows):
        other = second.get(i)
        reasons = [d.invalid for d in (first[i], other) if d is not None and d.invalid]
        out.append({
            "prompt_id": r["prompt_id"],
            "messages": r["messages"],
            "horizon": branches[i][0],
            "branch_turn": branches[i][1],
            "rollout1": first[i].messages,
            "rollout2": other.messages if other else [],
            "finish1": first[i].finish,
            "finish2": other.finish if other else [],
            "invalid_reason": reasons[0] if reasons else None,
        })
    return out


def reply_seed(s: Settings, turn: int, which: int) -> int:
    """Seed of the policy replies of `turn` in rollout `which`. Rollout 2 gets its own seeds: with one seed
    for both, an engine with per-request seeds (vLLM) would repeat rollout 1's reply at the branch turn."""
    return s.seed + 50 * turn + (0 if which == 1 else 25)


def _reply(s: Settings, engine, dialogues: list[Rollout], seed: int) -> None:
    """Append one policy reply to each dialogue, `batch_size` dialogues per engine call."""
    params = SamplingParams(1, s.temperature, s.top_p, s.max_new_tokens, seed)
    for start in range(0, len(dialogues), s.batch_size):
        batch = dialogues[start : start + s.batch_size]
        for d, comps in zip(batch, engine.generate([d.messages for d in batch], params), strict=True):
            d.messages.append({"role": "assistant", "content": comps[0].text})
            d.finish.append(comps[0].finish_reason)


def run(settings: Settings, prompts: ArtifactRef, policy: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [prompts, policy])
    if store.is_complete(ref, quarantine=True):
        return ref
    engine = user = None

    def dialogues(chunk: list[dict], advance) -> list[dict]:
        nonlocal engine, user
        engine = engine or load_engine(
            settings.engine, store.model_path(policy), settings.dtype, policy.revision, vllm=settings.vllm,
            chat_template=policy.chat_template,
        )
        user = user or load_user(settings.user)
        return rollout(settings, chunk, engine, user)

    with store.writer(ref, VERSION, hashed_settings(settings), [prompts, policy]) as w:
        done = write_in_shards(w, store.read_rows(prompts), settings.shard_size, dialogues, SCHEMA,
                               f"dialogues ×{settings.turns} turns", "dialogue")
        failures = [(f"prompt {r['prompt_id']}", r["invalid_reason"]) for r in done if r["invalid_reason"]]
        check_invalid(failures, len(done), settings.user.max_invalid_fraction, "dialogue.user.max_invalid_fraction",
                      "the simulated user", "Fix the simulated user.")
        w.finish(summary=_summary(done), card="Multi-turn dialogues with a simulated user; rollout 2 branches at turn h.")
    return ref


def _summary(rows: list[dict]) -> dict:
    invalid = [r["invalid_reason"] for r in rows if r["invalid_reason"]]
    return {
        "dialogues": len(rows),
        "invalid": len(invalid),
        "first invalid reason": invalid[0] if invalid else None,
        "mean replies in rollout 1": round(sum(len(r["finish1"]) for r in rows) / len(rows), 3),
        "mean horizon L": round(sum(r["horizon"] for r in rows) / len(rows), 3),
        "mean branch turn h": round(sum(r["branch_turn"] for r in rows) / len(rows), 3),
        "sample": [
            {"prompt_id": r["prompt_id"], "L": r["horizon"], "h": r["branch_turn"],
             "rollout1": " | ".join(f"{m['role']}: {m['content']}" for m in r["rollout1"])}
            for r in rows[:5]
        ],
    }


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
