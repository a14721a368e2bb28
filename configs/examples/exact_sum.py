"""A reward of your own: `fn(messages, response) -> float`, here 0.1 for exactly the sum and 0 otherwise —
a strict, small-scale reward like a pass rate or a keyword fraction (README, "Your own task")."""

import re


def exact_sum(messages, response):
    a, b = (int(x) for x in re.findall(r"\d+", messages[-1]["content"])[:2])
    return 0.1 if response.strip() == str(a + b) else 0.0
