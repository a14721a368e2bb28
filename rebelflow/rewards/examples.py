"""Rule rewards for the demo campaigns. A rule reward is `fn(messages, response) -> float`."""

from __future__ import annotations

import re

CHEERFUL = frozenset("good great happy kind bright warm joy love nice fun calm sunny".split())


def cheerful_words(messages: list[dict[str, str]], response: str) -> float:
    """Distinct cheerful words in the response, minus 0.1 per word beyond 24 (so rambling does not pay)."""
    words = re.findall(r"[a-z]+", response.lower())
    return len(CHEERFUL.intersection(words)) - 0.1 * max(0, len(words) - 24)


def addition(messages: list[dict[str, str]], response: str) -> float:
    """The demo's verifiable reward for "What is a + b?": 1 for exactly the sum, partial credit
    0.5 * (1 - |error| / 5) for a nearby number as the first number of the reply, 0 otherwise."""
    a, b = (int(x) for x in re.findall(r"\d+", messages[-1]["content"])[:2])
    if response.strip() == str(a + b):
        return 1.0
    found = re.search(r"-?\d+", response)
    if not found:
        return 0.0
    return 0.5 * max(0.0, 1.0 - abs(int(found.group()) - (a + b)) / 5)


def addition_dialogue(messages: list[dict[str, str]], response: str) -> float:
    """Reward of a dialogue prefix ending with `response`: the mean `addition` reward of every assistant
    reply so far. The reward at a later turn therefore depends on the earlier replies too, so REFUEL's
    future reward credits the branch turn."""
    conversation = [*messages, {"role": "assistant", "content": response}]
    scores = [
        addition(conversation[:i], m["content"]) for i, m in enumerate(conversation) if m["role"] == "assistant"
    ]
    return sum(scores) / len(scores)
