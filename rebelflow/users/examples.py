"""Scripted users for the demo campaigns. A scripted user is `fn(messages) -> str`."""

from __future__ import annotations

import random


def addition_quiz(messages: list[dict[str, str]]) -> str:
    """Asks the next single-digit sum, chosen from the first question and the turn number (deterministic)."""
    replies = sum(m["role"] == "assistant" for m in messages)
    rng = random.Random(f"{messages[0]['content']}|{replies}")
    return f"What is {rng.randrange(10)} + {rng.randrange(10)}?"
