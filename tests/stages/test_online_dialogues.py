"""A multi-turn online round (REFUEL setting two) on a dataset user: two dialogues per prompt, the second
branched at turn h; user turns from the data; the trained reply, its KL and its no-end-of-turn penalty
are turn h's; the reward scores the whole dialogue; evaluation gives win rates per turn."""

from __future__ import annotations

import json
import random

import pytest

from rebelflow.ml.chat import tokenize_reply, turn_positions
from rebelflow.rewards.examples import addition_dialogue
from tests.conftest import make_config, write_prompts
from tests.stages.helpers import run_round


def sums(rng: random.Random, k: int) -> list[str]:
    return [f"What is {rng.randrange(10)} + {rng.randrange(10)}?" for _ in range(k)]


@pytest.fixture
def dialogue_prompts(tmp_path):
    rng = random.Random(0)
    rows = []
    for i in range(12):
        first, *more = sums(rng, 1 + i % 3)  # dialogues of 1, 2 or 3 turns
        rows.append({"id": f"d{i}", "prompt": first, "more": more})
    return write_prompts(tmp_path / "dialogues.jsonl", rows)


def test_a_multi_turn_online_round_on_a_dataset_user(tmp_path, tiny_policy, dialogue_prompts):
    from transformers import AutoTokenizer

    cfg = make_config(
        tmp_path, dialogue_prompts,
        dialogue={"turns": 3, "horizon": "last", "branch": "uniform",
                  "user": {"kind": "dataset", "turns_column": "more"}},
        online={"iterations": 2, "prompts_per_iteration": 6, "minibatch_pairs": 3, "kl_coef": 0.05,
                "penalty_reward_value": -2.0, "validate_every": 1, "validation_prompts": 3, "checkpoint_every": 1},
        reward={"backend": "rule", "function": "rebelflow.rewards.examples:addition_dialogue"},
        generate={"n": 2, "max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "batch_size": 8, "shard_size": 8},
        evaluate={"prompts": {"source": str(dialogue_prompts), "id_column": "id", "per_round": 6}, "n": 1,
                  "max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "batch_size": 8},
    )
    store, refs, _ = run_round(cfg, tiny_policy, upto="evaluate")
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    rows = store.read_rows(refs["online"])
    data = {r["id"]: r for r in map(json.loads, dialogue_prompts.read_text().splitlines())}
    prompts = store.read_rows(refs["prompts"])
    assert len(rows) == 2 * 2 * 6  # 2 iterations × 6 prompts × 2 dialogues
    branch_turns = set()
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        assert (first["sample"], second["sample"]) == (0, 1) and first["prompt_index"] == second["prompt_index"]
        source = data[prompts[first["prompt_index"]]["prompt_id"]]
        h = first["branch_turn"]
        assert second["branch_turn"] == h and first["messages"] == second["messages"]  # one shared prefix
        branch_turns.add(h)
        for r in (first, second):
            dialogue = r["dialogue"]
            assert [m["content"] for m in dialogue if m["role"] == "user"] == [source["prompt"], *source["more"]]
            replies = turn_positions(dialogue, "assistant")
            assert len(replies) == 1 + len(source["more"]) and 0 <= h < len(replies)
            assert r["messages"] == dialogue[: replies[h]] and r["response"] == dialogue[replies[h]]["content"]
            ids, mask, _ = tokenize_reply(tokenizer, r["messages"], r["response"])  # only turn h is trained
            assert (r["ids"], r["mask"]) == (ids, mask)
            assert r["score"] == pytest.approx(addition_dialogue(dialogue[:-1], dialogue[-1]["content"]))
            expected = (r["score"] if r["has_end"] else -2.0) - 0.05 * r["kl"]
            assert r["reward"] == pytest.approx(expected)
            assert r["invalid"] is None
        # before turn h the two dialogues are one; from turn h on the second is its own
        assert first["dialogue"][: turn_positions(first["dialogue"], "assistant")[h]] == first["messages"]
    assert len(branch_turns) > 1  # h drawn per prompt over the dialogue's own turns
    assert all(r["kl"] == pytest.approx(0, abs=1e-5) for r in rows if r["iteration"] == 1)

    summary = store.manifest(refs["online"])["summary"]
    assert summary["iterations"] == 2 and summary["first val_score"] is not None
    evaluation = store.manifest(refs["evaluate"])["summary"]
    assert len(evaluation["win_rate_by_turn"]) == 3, evaluation  # REFUEL's table: a win rate per turn
