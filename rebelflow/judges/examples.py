"""Scripted judges for the demo campaigns, tests and rehearsals. A scripted judge is `fn(a, b)`: the two
conversations (message lists ending with the answers being judged) in; out the judge's text, or a
probability that A is better."""

from __future__ import annotations

from rebelflow.rewards.examples import addition


def addition_referee(a: list[dict[str, str]], b: list[dict[str, str]]) -> str:
    """Judges the demos' addition answers as MT-Bench's pair format asks: the last reply that is the sum
    (or nearer to it) wins, equal ones tie."""
    score_a, score_b = addition(a[:-1], a[-1]["content"]), addition(b[:-1], b[-1]["content"])
    verdict = "[[A]]" if score_a > score_b else "[[B]]" if score_b > score_a else "[[C]]"
    return f"Assistant A's last answer scores {score_a:.2f}, assistant B's {score_b:.2f}. {verdict}"


def stand_in(a: list[dict[str, str]], b: list[dict[str, str]]) -> float:
    """A rehearsal's stand-in for a served judge, in either format (a probability that A is better): the
    shorter last answer wins, equal ones tie — deterministic, not a judgment of quality."""
    la, lb = len(a[-1]["content"]), len(b[-1]["content"])
    return 1.0 if la < lb else 0.0 if lb < la else 0.5
