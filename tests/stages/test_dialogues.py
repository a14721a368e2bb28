"""Multi-turn (REFUEL) generation, scoring and pairing."""

import math
from collections import Counter

import pytest

from rebelflow.config.campaign import UserConfig
from rebelflow.config.errors import TransientError
from rebelflow.engines import Completion
from rebelflow.ml.chat import turn_positions
from rebelflow.stages import generate_dialogues, prepare_dialogues, score_dialogues
from rebelflow.users import UserRequest, load_user
from rebelflow.users.llm import parse_reply, render_transcript
from tests.unit.test_chat import llama3  # noqa: F401  (fixture)

USER = UserConfig(kind="scripted", function="rebelflow.users.examples:addition_quiz")


def settings(**changes) -> generate_dialogues.Settings:
    base = dict(engine="hf", temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0, batch_size=64, shard_size=4,
                dtype="float32", turns=4, horizon="uniform", branch="uniform", dialogue_seed=0, branching=True,
                user=USER, user_identity="x")
    return generate_dialogues.Settings(**{**base, **changes})


class CountingEngine:
    """Answers 'r<call>-<row>' and records the size and seed of every call."""

    def __init__(self):
        self.calls, self.seeds = [], []

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        self.seeds.append(params.seed)
        return [[Completion(f"r{len(self.calls)}-{i}", [1, 2], "stop", params.seed)] for i in range(len(prompts))]


class PerRequestSeedEngine:
    """Like vLLM with per-request seeds: the reply is a function of the conversation and the seed only."""

    def generate(self, prompts, params):
        return [[Completion(f"{hash((str(p), params.seed)) % 997}", [1], "stop", params.seed)] for p in prompts]


def prompt_rows(n: int) -> list[dict]:
    return [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"What is {i % 10} + 1?"}],
             "user_turns": []} for i in range(n)]


def test_branch_draws_follow_refuel_and_are_seeded_per_prompt():
    s = settings()
    draws = [generate_dialogues.draw_branch(s, f"p{i}") for i in range(4000)]
    horizons = Counter(h for h, _ in draws)
    assert set(horizons) == {0, 1, 2, 3} and min(horizons.values()) > 850  # L ~ U{0..3}
    given_3 = Counter(b for h, b in draws if h == 3)
    assert set(given_3) == {0, 1, 2, 3} and min(given_3.values()) > 180  # h ~ U{0..L}
    assert all(b <= h for h, b in draws)
    assert draws[:50] == [generate_dialogues.draw_branch(s, f"p{i}") for i in range(50)]
    assert draws[:50] != [generate_dialogues.draw_branch(settings(dialogue_seed=1), f"p{i}") for i in range(50)]
    assert {generate_dialogues.draw_branch(settings(branch="last", horizon=2), "p") } == {(2, 2)}


def test_rollout_two_shares_exactly_the_prefix_and_turns_are_batched():
    s = settings()
    engine, user = CountingEngine(), load_user(USER)
    rows = generate_dialogues.rollout(s, prompt_rows(12), engine, user)
    # one engine call per turn and rollout, never one per dialogue; rollout 2 has seeds of its own
    assert len(engine.calls) <= 8 and sum(engine.calls) == sum(4 + r["horizon"] + 1 - r["branch_turn"] for r in rows)
    assert set(engine.seeds) <= {50 * t for t in range(4)} | {50 * t + 25 for t in range(4)}
    assert engine.seeds[0] == 0 and 25 in engine.seeds
    for r in rows:
        horizon, h = r["horizon"], r["branch_turn"]
        one, two = r["rollout1"], r["rollout2"]
        assert len(turn_positions(one, "assistant")) == 4 and len(turn_positions(two, "assistant")) == horizon + 1
        cut = turn_positions(one, "user")[h] + 1
        assert two[:cut] == one[:cut]  # everything up to and including user turn h
        assert two[cut]["content"] != one[cut]["content"]  # turn h is sampled again
        assert r["finish1"] == ["stop"] * 4 and len(r["finish2"]) == horizon + 1 and r["invalid_reason"] is None


def test_rollout_two_differs_at_the_branch_turn_on_an_engine_with_per_request_seeds():
    rows = generate_dialogues.rollout(settings(), prompt_rows(20), PerRequestSeedEngine(), load_user(USER))
    for r in rows:
        h = r["branch_turn"]
        replies = [turn_positions(d, "assistant")[h] for d in (r["rollout1"], r["rollout2"])]
        assert r["rollout1"][replies[0]] != r["rollout2"][replies[1]]


def test_unbranched_dialogues_for_evaluation():
    rows = generate_dialogues.rollout(settings(branching=False), prompt_rows(3), CountingEngine(), load_user(USER))
    assert all(r["rollout2"] == [] and len(turn_positions(r["rollout1"], "assistant")) == 4 for r in rows)


def test_user_reply_parser():
    assert parse_reply("I want more.\nQuestion: What about dogs?").text == "What about dogs?"
    assert parse_reply("Question: a\nQuestion: b ").text == "b"  # the last one
    assert parse_reply("Just tell me more.").text == "Just tell me more."  # fallback: the whole output
    assert parse_reply("  ").invalid_reason == "the user model wrote nothing"
    assert parse_reply("why\nQuestion:   ").invalid_reason == "the user model wrote nothing after 'Question:'"
    assert render_transcript([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "yo"}]) == "### user: hi\n### assistant: yo"


def test_failing_users_mark_the_dialogue_invalid(tmp_path):
    (tmp_path / "u.py").write_text("def ask(messages):\n    raise KeyError('no more')\n")
    broken = UserConfig(kind="scripted", function=f"{tmp_path / 'u.py'}:ask")
    rows = generate_dialogues.rollout(settings(user=broken), prompt_rows(2), CountingEngine(), load_user(broken))
    assert all("raised KeyError" in r["invalid_reason"] for r in rows)
    data_user = load_user(UserConfig(kind="dataset", turns_column="more"))
    turns = data_user.next_turns([UserRequest([], 1, ["second"]), UserRequest([], 2, ["second"])], 0)
    assert turns[0].text == "second" and "turn 2 is missing" in turns[1].invalid_reason


def test_a_dataset_user_runs_each_dialogue_to_its_own_length():
    """REFUEL setting two: a row with fewer later user turns than `turns` is a shorter dialogue, not an
    invalid one; with horizon 'last' the pair is compared at the dialogue's end, h uniform over its turns."""
    data = UserConfig(kind="dataset", turns_column="more")
    s = settings(user=data, turns=3, horizon="last")
    rows = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"Q{i}"}],
             "user_turns": [f"T{i}-{j}" for j in range(i % 4)]} for i in range(40)]
    out = generate_dialogues.rollout(s, rows, CountingEngine(), load_user(data))
    for i, r in enumerate(out):
        n = min(3, 1 + i % 4)
        assert r["invalid_reason"] is None and r["horizon"] == n - 1 and 0 <= r["branch_turn"] <= n - 1
        assert [m["content"] for m in r["rollout1"] if m["role"] == "user"] == [f"Q{i}"] + rows[i]["user_turns"][: n - 1]
        assert len(turn_positions(r["rollout1"], "assistant")) == n == len(turn_positions(r["rollout2"], "assistant"))
    assert {r["branch_turn"] for r in out if r["horizon"] == 2} == {0, 1, 2}
    assert generate_dialogues.draw_branch(settings(horizon=3), "p", turns=2)[0] == 1  # clipped to the end
    assert {generate_dialogues.draw_branch(settings(), f"p{i}", turns=2)[0] for i in range(50)} == {0, 1}


def test_llm_user_reads_the_transcript_in_one_message_and_samples_with_its_own_settings(monkeypatch):
    from rebelflow.users import llm

    class Recorder:
        def generate(self, prompts, params):
            self.prompts, self.params = prompts, params
            outputs = ["Curious.\nQuestion: And 2 + 2?", "Question:   ", "What about 3 + 3?"]
            return [[Completion(text, [1], "stop", params.seed)] for text in outputs]

    engine = Recorder()
    monkeypatch.setattr(llm, "load_engine", lambda *args, **kwargs: engine)
    cfg = UserConfig(kind="llm", model="unused", temperature=0.3, top_p=0.7, max_new_tokens=7,
                     template="Play the user.\n{transcript}\nAnswer now.")
    convo = [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is 1 + 1?"},
             {"role": "assistant", "content": "2"}]
    turns = load_user(cfg).next_turns([UserRequest(convo, 1)] * 3, seed=50)
    assert engine.prompts[0] == [{"role": "user", "content":
                                  "Play the user.\n### user: What is 1 + 1?\n### assistant: 2\nAnswer now."}]
    assert (engine.params.temperature, engine.params.top_p, engine.params.max_new_tokens, engine.params.seed) == (
        0.3, 0.7, 7, 50)
    assert [t.text for t in turns] == ["And 2 + 2?", None, "What about 3 + 3?"]
    assert "nothing after 'Question:'" in turns[1].invalid_reason


def test_an_llm_user_on_a_real_tiny_model(tiny_policy):
    """The llm user on the transformers engine: every dialogue gets model-written user turns (or a reason)."""
    cfg = UserConfig(kind="llm", model=tiny_policy, engine="hf", max_new_tokens=6, temperature=1.0)
    engine = CountingEngine()
    rows = generate_dialogues.rollout(settings(user=cfg, turns=2, branching=False), prompt_rows(4), engine,
                                      load_user(cfg))
    for r in rows:
        users = [m["content"] for m in r["rollout1"] if m["role"] == "user"]
        assert (len(users) == 2 and users[1].strip()) or "user model wrote nothing" in r["invalid_reason"]
    assert any(r["invalid_reason"] is None for r in rows)


def scored_row(one, two, horizon, h, rewards1, rewards2):
    return {"prompt_id": "x", "rollout1": one, "rollout2": two, "horizon": horizon, "branch_turn": h,
            "finish1": ["stop"] * 3, "finish2": ["stop"] * 3, "invalid_reason": None,
            "rewards1": rewards1, "rewards2": rewards2}


def dialogue(*replies, system=True):
    msgs = [{"role": "system", "content": "Be brief."}] if system else []
    for i, reply in enumerate(replies):
        msgs += [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": reply}]
    return msgs


def test_refuel_pair_masks_only_the_turn_h_reply_on_a_llama3_template(llama3):  # noqa: F811
    one, two = dialogue("Cats purr.", "Cats sleep.", "Yes."), dialogue("Cats purr.", "Cats a lot.", "No.")
    s = prepare_dialogues.Settings(validation_pairs=0)
    pair, reason = prepare_dialogues.make_pair(s, llama3, scored_row(one, two, 2, 1, [0, 0, 0.2], [0, 0, 0.9]))
    assert reason is None
    assert pair["chosen_text"] == "Cats a lot." and pair["chosen_reward"] == 0.9  # rollout 2 wins at turn L
    for side in ("chosen", "rejected"):
        ids, mask = pair[f"{side}_ids"], pair[f"{side}_mask"]
        assert llama3.decode([t for t, m in zip(ids, mask, strict=True) if m]) == pair[f"{side}_text"] + "<|eot_id|>"
        text = llama3.decode(ids)
        assert text.count("<|start_header_id|>user") == 2 and "Be brief." in text and "Question 2" not in text
    assert pair["messages"] == one[:4]  # system, user 0, assistant 0, user 1


def test_identical_turn_h_replies_and_invalid_rewards_are_dropped(llama3):  # noqa: F811
    one, two = dialogue("a", "same", "x"), dialogue("a", "same ", "y")
    s = prepare_dialogues.Settings(validation_pairs=0)
    assert prepare_dialogues.make_pair(s, llama3, scored_row(one, two, 2, 1, [0, 0, 1], [0, 0, 0])) == (
        None, "identical pair")
    two = dialogue("a", "other", "y")
    assert prepare_dialogues.make_pair(s, llama3, scored_row(one, two, 2, 1, [0, 0, math.nan], [0, 0, 0])) == (
        None, "invalid reward")


def test_per_turn_scores_copy_the_shared_turns():
    class Rule:
        def score(self, items):
            from rebelflow.rewards import Reward

            return [Reward(float(len(reply))) for _, reply in items]

    row = {"rollout1": dialogue("a", "bb", "ccc", system=False), "rollout2": dialogue("a", "dddd", system=False),
           "branch_turn": 1, "horizon": 1}
    score_dialogues.score_rows([row], Rule())
    assert row["rewards1"] == [1.0, 2.0, 3.0] and row["rewards2"] == [1.0, 4.0] and row["reward_reasons"] == []


def test_dialogue_generation_resumes_by_shard(tmp_path, prompts_file, tiny_policy, monkeypatch):
    from rebelflow.planning.campaign import Baseline, round_plan
    from rebelflow.running.launch import launch
    from rebelflow.store.local import Store
    from rebelflow.store.refs import external_model
    from tests.conftest import make_config

    cfg = make_config(tmp_path, prompts_file, stop_after="generate",
                      dialogue={"turns": 2, "user": USER.model_dump()})
    store = Store(cfg.store.root)
    jobs = round_plan(cfg, 1, external_model(tiny_policy), Baseline()).jobs()
    launch(jobs[0], store)
    real, calls, failed = generate_dialogues.rollout, [], []

    def flaky(s, rows, engine, user):
        calls.append(len(rows))
        if len(calls) == 2 and not failed:  # the second shard fails once
            failed.append(True)
            raise ConnectionError("lost the engine")
        return real(s, rows, engine, user)

    monkeypatch.setattr(generate_dialogues, "rollout", flaky)
    with pytest.raises(TransientError, match="ConnectionError"):
        launch(jobs[1], store)
    calls.clear()
    launch(jobs[1], store)
    assert calls == [4, 4]  # shard 0 was kept; shards 1 and 2 made now
    rows = store.read_rows(jobs[1].ref)
    assert len(rows) == 12 and all(len(turn_positions(r["rollout1"], "assistant")) == 2 for r in rows)


def test_per_turn_win_rates_by_hand():
    """REFUEL's table: turn t compares the two policies' rewards of the prefix ending at reply t; ties count
    half, a missing or invalid reward leaves the prompt out of that turn, the average is over turns."""
    from rebelflow.flows.summary import by_turn_text
    from rebelflow.stages import evaluate_dialogues

    def row(pid, rewards):
        return {"prompt_id": pid, "messages": [], "rollout1": [{"role": "assistant", "content": "4"}], "rewards1": rewards}

    new = [row("a", [0.9, 0.2, 0.7]), row("b", [0.5, 0.6, math.nan]), row("c", [0.1])]
    base = [row("a", [0.1, 0.2, 0.8]), row("b", [0.5, 0.1, 0.3]), row("c", [0.4])]
    summary = evaluate_dialogues.summarise(evaluate_dialogues.compare(new, base))
    # turn 1: win, tie, loss -> 0.5; turn 2: tie, win -> 0.75; turn 3: loss (b's is invalid) -> 0.0
    assert summary["win_rate_by_turn"] == [0.5, 0.75, 0.0]
    assert summary["win_rate"] == pytest.approx(1.25 / 3, abs=1e-5)
    assert by_turn_text(summary) == "0.50 0.75 0.00"
    assert by_turn_text({"win_rate_by_turn": [0.5, None]}, " · ") == "0.50 · –"


def test_a_user_failing_for_many_dialogues_stops_generation(tmp_path, prompts_file, tiny_policy):
    """A simulated user that fails for 6 of 12 dialogues (above max_invalid_fraction 0.1) stops the stage with
    the most common reason and an example; with the limit raised the stage runs and counts them."""
    from rebelflow.config.errors import DataError
    from rebelflow.planning.campaign import Baseline, round_plan
    from rebelflow.running.launch import launch
    from rebelflow.store.local import Store
    from rebelflow.store.refs import external_model
    from tests.conftest import make_config

    (tmp_path / "u.py").write_text(
        "def ask(messages):\n"
        "    if messages[0]['content'].split()[-1].rstrip('.') in {'cats', 'music', 'trains', 'tea', 'boats', 'honey'}:\n"
        "        raise KeyError('odd topic')\n"
        "    return 'and then?'\n"
    )
    user = {"kind": "scripted", "function": f"{tmp_path / 'u.py'}:ask"}
    for limit, fails in ((0.1, True), (0.9, False)):
        cfg = make_config(tmp_path / str(limit), prompts_file, stop_after="generate",
                          dialogue={"turns": 2, "user": {**user, "max_invalid_fraction": limit}})
        store = Store(cfg.store.root)
        jobs = round_plan(cfg, 1, external_model(tiny_policy), Baseline()).jobs()
        launch(jobs[0], store)
        if fails:
            with pytest.raises(DataError, match=r"the simulated user failed for 6 of 12 \(50%\), above "
                                                r"dialogue.user.max_invalid_fraction \(0.1\).*raised KeyError.*\(e.g. prompt p"):
                launch(jobs[1], store)
        else:
            launch(jobs[1], store)
            assert store.manifest(jobs[1].ref)["summary"]["invalid"] > 0
