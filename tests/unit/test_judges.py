"""LLM judges: verdicts read in MT-Bench's pair format and the preference format (logprobs or label), both
orders (a verdict that flips with the order is a tie), unreadable verdicts asked again then counted, every
answer cached by content, the judge's request, an OpenAI-compatible endpoint (a local stand-in server), and
the judge stage per turn for dialogues."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rebelflow.config.dialogue import OpenAIConfig
from rebelflow.config.errors import ConfigError
from rebelflow.config.judge import JudgeConfig
from rebelflow.judges import Judge, combine, parse_pair, parse_preference
from rebelflow.judges.prompts import judge_messages, mt_bench_prompts
from rebelflow.stages.judge import pairs_of, summarise

PAIR = JudgeConfig(kind="callable", function="rebelflow.judges.examples:addition_referee")
Q = [{"role": "user", "content": "What is 2 + 3?"}]


def convo(answer: str, context=Q) -> list[dict]:
    return [*context, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize("text, score", [
    ("A is clearer. [[A]]", 1.0), ("[[B]]", 0.0), ("Both fine: [[C]]", 0.5), ("I prefer A.", None),
    ("[[A]] at first, but on reflection [[B]]", None), ("[[A]] ... final: [[A]]", 1.0), ("[A]", None),
])
def test_pair_verdicts_read_as_mt_bench_writes_them(text, score):
    assert parse_pair(text) == score


def test_preferences_come_from_the_labels_logprobs_else_the_label():
    assert parse_preference("A", {"A": math.log(0.75), "B": math.log(0.25)}) == pytest.approx(0.75)
    assert parse_preference("B", {" B": math.log(0.6), "A": math.log(0.3), "C": -1.0}) == pytest.approx(1 / 3)
    assert parse_preference("A", {"A": -0.01, "The": -5.0}) == 1.0  # B not among the top tokens: the label
    assert parse_preference(" B.", None) == 0.0
    assert parse_preference("Assistant A is better", None) is None and parse_preference("", None) is None


def test_both_orders_a_flipped_verdict_is_a_tie():
    assert combine("pair", 1.0, 1.0) == 1.0 and combine("pair", 0.0, 0.0) == 0.0
    assert combine("pair", 1.0, 0.0) == 0.5 and combine("pair", 1.0, 0.5) == 0.5
    assert combine("preference", 0.9, 0.7) == pytest.approx(0.8) and combine("pair", None, 1.0) is None


def test_a_judge_biased_to_the_first_answer_gives_ties_and_a_fair_one_the_right_winner(tmp_path):
    first = Judge(PAIR, "first", tmp_path / "a", ask=lambda request: ("[[A]]", None))
    assert [j.outcome for j in first.judge([(convo("5"), convo("7")), (convo("9"), convo("5"))])] == [0.5, 0.5]
    fair = Judge(PAIR, "referee", tmp_path / "b")  # the scripted referee: the sum wins
    got = fair.judge([(convo("5"), convo("7")), (convo("9"), convo("5")), (convo("4"), convo("6"))])
    assert [j.outcome for j in got] == [1.0, 0.0, 0.5]
    assert (got[0].new_first, got[0].new_second) == (1.0, 1.0) and "[[A]]" in got[0].texts[0]


def test_unreadable_verdicts_are_asked_again_then_counted_and_readable_ones_cached(tmp_path):
    answers = iter(["hmm", "still thinking", "[[B]]"] + ["no idea"] * 3)
    judge = Judge(PAIR, "moody", tmp_path, ask=lambda request: (next(answers), None))
    [j] = judge.judge([(convo("5"), convo("7"))])
    assert judge.calls == 6 and j.new_first == 0.0 and j.new_second is None and j.outcome is None
    again = Judge(PAIR, "moody", tmp_path, ask=lambda request: ("[[A]]", None))
    [k] = again.judge([(convo("5"), convo("7"))])
    assert again.calls == 1 and k.new_first == 0.0 and k.new_second == 0.0  # the first order from the cache
    third = Judge(PAIR, "moody", tmp_path, ask=lambda request: pytest.fail("answered from the cache"))
    assert third.judge([(convo("5"), convo("7"))])[0].outcome == 0.0 and third.calls == 0
    other = Judge(PAIR, "another judge", tmp_path, ask=lambda request: ("[[C]]", None))
    assert other.judge([(convo("5"), convo("7"))])[0].outcome == 0.5 and other.calls == 2  # its own answers


def test_the_judge_is_asked_with_mt_bench_prompts():
    single = judge_messages("pair", convo("5"), convo("7"))
    assert single[0]["content"] == mt_bench_prompts()["pair-v2"]["system_prompt"]
    assert "[User Question]\nWhat is 2 + 3?" in single[1]["content"]
    body = single[1]["content"]
    assert body.index("[The Start of Assistant A's Answer]\n5\n") < body.index("[The Start of Assistant B's Answer]\n7\n")
    a = convo("7", [*convo("5"), {"role": "user", "content": "And 1 + 1?"}])
    b = convo("2", [*convo("4"), {"role": "user", "content": "And 1 + 1?"}])
    multi = judge_messages("pair", a, b)
    fastchat = mt_bench_prompts()["pair-v2-multi-turn"]["system_prompt"]
    assert "the second user question" in fastchat  # MT-Bench judges turn 2 of 2; a dialogue's turn t is its last
    assert multi[0]["content"] == fastchat.replace("the second user question", "the last user question")
    assert "### User:\nAnd 1 + 1?\n\n### Assistant A:\n7" in multi[1]["content"]
    assert "### Assistant B:\n4" in multi[1]["content"]
    third = judge_messages("pair", convo("9", [*a, {"role": "user", "content": "And 4 + 5?"}]),
                           convo("8", [*b, {"role": "user", "content": "And 4 + 5?"}]))[1]["content"]
    assert third.count("### User:") == 6 and "### Assistant A:\n9\n\n<|The End of Assistant A's" in third
    assert "Reply with a single letter" in judge_messages("preference", convo("5"), convo("7"))[0]["content"]


class StandIn(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that prefers the answer '5' and reports logprobs when asked."""

    seen: list = []
    keys: list = []  # the Authorization header of every request
    failures = 0  # answer this many requests with 503 first (a busy server)
    delay, in_flight, most_in_flight = 0.0, 0, 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with StandIn.lock:
            StandIn.keys.append(self.headers.get("Authorization"))
            busy, StandIn.failures = StandIn.failures > 0, max(StandIn.failures - 1, 0)
            StandIn.in_flight += 1
            StandIn.most_in_flight = max(StandIn.most_in_flight, StandIn.in_flight)
        time.sleep(StandIn.delay)
        with StandIn.lock:
            StandIn.in_flight -= 1
        if busy:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        StandIn.seen.append(body)
        text = body["messages"][1]["content"]
        a_is_5 = "Assistant A's answer]\n5" in text or "Assistant A's Answer]\n5" in text
        content = ("A" if a_is_5 else "B") if body.get("logprobs") else ("[[A]]" if a_is_5 else "[[B]]")
        top = [{"token": "A", "logprob": math.log(0.8 if a_is_5 else 0.3), "bytes": None},
               {"token": "B", "logprob": math.log(0.2 if a_is_5 else 0.7), "bytes": None}]
        logprobs = {"content": [{"token": content, "logprob": -0.1, "bytes": None, "top_logprobs": top}]}
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content},
                              "logprobs": logprobs if body.get("logprobs") else None}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StandIn.seen, StandIn.keys, StandIn.failures, StandIn.delay, StandIn.most_in_flight = [], [], 0, 0.0, 0
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


@pytest.mark.parametrize("fmt", ["pair", "preference"])
def test_an_openai_compatible_judge(tmp_path, endpoint, fmt):
    cfg = JudgeConfig(kind="openai", format=fmt, openai=OpenAIConfig(base_url=endpoint, model="judge", api_key_env=None))
    judge = Judge(cfg, "openai:judge", tmp_path)
    [j] = judge.judge([(convo("5"), convo("7"))])
    assert len(StandIn.seen) == 2 and StandIn.seen[0]["model"] == "judge" and StandIn.seen[0]["temperature"] == 0.0
    if fmt == "pair":
        assert j.outcome == 1.0 and StandIn.seen[0]["max_tokens"] == 1024
    else:  # 0.8 with the new answer first, 1 − 0.3 second: their mean
        assert StandIn.seen[0]["max_tokens"] == 1 and StandIn.seen[0]["top_logprobs"] == 5
        assert (j.new_first, j.new_second, j.outcome) == pytest.approx((0.8, 0.7, 0.75))


def test_an_endpoint_judge_sends_the_key_from_its_variable_retries_a_busy_server_and_asks_concurrently(
        tmp_path, endpoint, monkeypatch):
    cfg = JudgeConfig(kind="openai", openai=OpenAIConfig(base_url=endpoint, model="judge", api_key_env="JUDGE_KEY",
                                                         concurrency=4, max_retries=2))
    with pytest.raises(ConfigError, match="JUDGE_KEY is not set"):
        Judge(cfg, "openai:judge", tmp_path).judge([(convo("5"), convo("7"))])
    assert StandIn.keys == []  # nothing was sent without the key
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    StandIn.failures, StandIn.delay = 2, 0.2  # two 503 answers, then slow ones
    judged = Judge(cfg, "openai:judge", tmp_path).judge([(convo("5"), convo(str(n))) for n in (6, 7, 8, 9)])
    assert [j.outcome for j in judged] == [1.0] * 4
    assert len(StandIn.keys) == 8 + 2 and set(StandIn.keys) == {"Bearer sk-test"}  # 8 judgments, 2 retried
    assert StandIn.most_in_flight > 1  # concurrency 4
    StandIn.failures = 10  # more 503s than max_retries allows: the request fails, not guessed
    with pytest.raises(Exception, match="503"):
        Judge(cfg, "openai:judge", tmp_path / "other").judge([(convo("5"), convo("4"))])


def test_dialogues_are_judged_turn_by_turn(tmp_path):
    context = [{"role": "user", "content": "What is 1 + 1?"}]
    new = [*context, {"role": "assistant", "content": "2"}, {"role": "user", "content": "What is 2 + 2?"},
           {"role": "assistant", "content": "4"}]
    base = [*context, {"role": "assistant", "content": "3"}, {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"}]
    rows = [{"prompt_id": "p", "messages": context, "new_dialogue": new, "baseline_dialogue": base},
            {"prompt_id": "q", "messages": context, "new_dialogue": new[:2], "baseline_dialogue": base}]
    items = pairs_of(rows)
    assert [(pid, turn, len(n), len(b)) for pid, turn, n, b in items] == [("p", 1, 2, 2), ("p", 2, 4, 4), ("q", 1, 2, 2)]
    judged = Judge(PAIR, "referee", tmp_path).judge([(n, b) for _, _, n, b in items])
    out = [{"prompt_id": pid, "turn": t, "outcome": j.outcome} for (pid, t, _, _), j in zip(items, judged, strict=True)]
    summary = summarise(out)
    assert summary["judge_win_rate_by_turn"] == [1.0, 0.5] and summary["judge_win_rate"] == 0.75
    assert (summary["judge_wins"], summary["judge_ties"], summary["judged"]) == (2, 1, 3)


def test_turns_are_numbered_as_the_reward_table_numbers_them_and_a_damaged_cache_entry_is_asked_again(tmp_path):
    context = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
               {"role": "user", "content": "What is 1 + 1?"}]
    row = {"prompt_id": "r", "messages": context, "new_dialogue": convo("2", context), "baseline_dialogue": convo("3", context)}
    assert [(pid, turn) for pid, turn, _, _ in pairs_of([row])] == [("r", 2)]  # turn 1 is the context's own reply

    judge = Judge(PAIR, "referee", tmp_path)
    assert judge.judge([(convo("5"), convo("7"))])[0].outcome == 1.0 and judge.calls == 2
    for entry in tmp_path.rglob("*.json"):
        entry.write_text("{not json")
    again = Judge(PAIR, "referee", tmp_path)
    assert again.judge([(convo("5"), convo("7"))])[0].outcome == 1.0 and again.calls == 2
    same = Judge(PAIR, "referee", tmp_path)
    assert same.judge([(convo("5"), convo("5"))])[0].outcome == 0.5 and same.calls == 1  # one request for both orders


@pytest.mark.parametrize("fmt", ["pair", "preference"])
def test_a_callable_may_answer_with_a_probability_in_either_format(tmp_path, fmt):
    cfg = JudgeConfig(kind="callable", function="rebelflow.judges.examples:stand_in", format=fmt)
    got = Judge(cfg, "stand-in", tmp_path).judge([(convo("5"), convo("17")), (convo("12"), convo("34"))])
    assert [j.outcome for j in got] == pytest.approx([1.0, 0.5])  # the shorter answer wins; equal lengths tie


def test_a_judge_swayed_by_length_gets_a_length_controlled_win_rate_near_half(tmp_path):
    """A judge that prefers the shorter answer whatever it says (more surely the larger the difference); the
    new policy's answers are mostly shorter: its raw preference win rate is high, the length-controlled one
    (the judge stage's judge_lc_win_rate, preference format) near 1/2."""
    import random

    from rebelflow.stages.judge import length_controlled

    (tmp_path / "judge.py").write_text("import math\n\ndef shorter(a, b):\n"
                                       "    return 1 / (1 + math.exp((len(a[-1]['content']) - len(b[-1]['content'])) / 15))\n")
    rng = random.Random(0)
    pairs = [(convo("x" * rng.randint(5, 60)), convo("y" * rng.randint(30, 90))) for _ in range(60)]
    cfg = JudgeConfig(kind="callable", function=f"{tmp_path / 'judge.py'}:shorter", format="preference")
    judged = Judge(cfg, "shorter", tmp_path / "cache").judge(pairs)
    rows = [{"turn": 1, "outcome": j.outcome, "new_chars": len(a[-1]["content"]), "baseline_chars": len(b[-1]["content"])}
            for (a, b), j in zip(pairs, judged, strict=True)]
    raw = summarise(rows)["judge_win_rate"]
    lc = length_controlled(rows)
    assert raw > 0.75 and abs(lc["judge_lc_win_rate"] - 0.5) < 0.08, (raw, lc)
    assert lc["judge_lc_length_weight"] > 0  # a longer baseline answer (Δ > 0) makes the new one win
    assert length_controlled(rows[:9]) == {} and length_controlled([{**r, "turn": 2} for r in rows]) == {}
