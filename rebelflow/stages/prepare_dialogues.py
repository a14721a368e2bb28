"""prepare_dialogues: REFUEL pairs — the two rollouts of a prompt, compared by their reward at turn L.

Consumes a score_dialogues artifact and the policy (for its tokenizer); produces the same columns as the
single-turn prepare stage, so logprobs and train need no multi-turn code: tokens are the templated
conversation through the assistant reply at turn h (the shared prefix, then each rollout's own turn-h
reply) and the mask is 1 exactly on that reply and its end-of-turn token — never on user turns or earlier
replies. chosen/rejected = the rollout with the higher/lower reward at turn L (the loss is symmetric;
the names only orient the logs). `messages` holds the shared context.

Filters, each counted: invalid dialogue (a user turn failed), invalid reward, no end-of-turn (only with
require_eot), identical turn-h replies, too long (templated tokens over max_prompt_tokens +
max_response_tokens). A held-out `validation` split as in prepare.

Run alone: python -m rebelflow.stages.prepare_dialogues configs/demo-refuel.yaml --round 1
"""

from __future__ import annotations

import math
from collections import Counter
from typing import ClassVar

from rebelflow.config.campaign import PrepareConfig
from rebelflow.ml.chat import tokenize_reply, turn_positions
from rebelflow.stages.prepare import write_pairs
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref

NAME, VERSION, KIND = "prepare_dialogues", 1, "dataset"
FILTERS = ("invalid dialogue", "invalid reward", "no end-of-turn", "identical pair", "too long")


class Settings(PrepareConfig):
    UNHASHED: ClassVar[set[str]] = {"launcher"}


def make_pair(s: Settings, tokenizer, row: dict) -> tuple[dict | None, str | None]:
    if row["invalid_reason"] or not row["rollout2"]:
        return None, "invalid dialogue"
    horizon, h = row["horizon"], row["branch_turn"]
    rewards = (row["rewards1"][horizon], row["rewards2"][horizon])
    if any(math.isnan(r) for r in rewards):
        return None, "invalid reward"
    if s.require_eot and "length" in (row["finish1"][h], row["finish2"][h]):
        return None, "no end-of-turn"
    context = row["rollout1"][: turn_positions(row["rollout1"], "user")[h] + 1]
    replies = [r[turn_positions(r, "assistant")[h]]["content"] for r in (row["rollout1"], row["rollout2"])]
    if replies[0].strip() == replies[1].strip():
        return None, "identical pair"
    tokens = [tokenize_reply(tokenizer, context, reply) for reply in replies]
    if max(len(ids) for ids, _, _ in tokens) > s.max_prompt_tokens + s.max_response_tokens:
        return None, "too long"
    c, r = (0, 1) if rewards[0] >= rewards[1] else (1, 0)
    return {
        "prompt_id": row["prompt_id"],
        "messages": context,
        "chosen_text": replies[c],
        "rejected_text": replies[r],
        "chosen_ids": tokens[c][0],
        "chosen_mask": tokens[c][1],
        "rejected_ids": tokens[r][0],
        "rejected_mask": tokens[r][1],
        "prompt_tokens": tokens[c][2],
        "chosen_reward": rewards[c],
        "rejected_reward": rewards[r],
    }, None


def run(settings: Settings, scored: ArtifactRef, policy: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [scored, policy])
    return write_pairs(
        settings, ref, VERSION, scored, policy, store, make_pair, FILTERS, "dialogues",
        "REFUEL pairs: two rollouts sharing a prefix, trained on the turn-h reply.",
        extra=lambda rows: {"branch turns h": dict(Counter(f"h={r['branch_turn']}" for r in rows))},
    )


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
