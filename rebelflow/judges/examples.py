"""Scripted judges for the demo campaigns and tests. A scripted judge is `fn(a, b) -> str`: the two
conversations (message lists ending with the answers being judged) in, the judge's text out."""

from __future__ import annotations

from rebelflow.rewards.examples import addition


def addition_referee(a: list[dict[str, str]], b: list[dict[str, str]]) -> str:
    """Judges the demos' addition answers as MT-Bench's pair format asks: the last reply that is the sum
    (or nearer to it) wins, equal ones tie."""
    score_a, score_b = addition(a[:-1], a[-1]["content"]), addition(b[:-1], b[-1]["content"])
    verdict = "[[A]]" if score_a > score_b else "[[B]]" if score_b > score_a else "[[C]]"
    return f"Assistant A's last answer scores {score_a:.2f}, assistant B's {score_b:.2f}. {verdict}"
