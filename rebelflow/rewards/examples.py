"""Rule rewards for the demo campaigns. A rule reward is `fn(messages, response) -> float`."""

from __future__ import annotations

import re

CHEERFUL = frozenset("good great happy kind bright warm joy love nice fun calm sunny".split())


def cheerful_words(messages: list[dict[str, str]], response: str) -> float:
    """Distinct cheerful words in the response, minus 0.1 per word beyond 24 (so rambling does not pay)."""
    words = re.findall(r"[a-z]+", response.lower())
    return len(CHEERFUL.intersection(words)) - 0.1 * max(0, len(words) - 24)
