"""Rule rewards: a Python callable `fn(messages, response) -> float`, named `module:function` or
`path/to/file.py:function`. A call that raises or returns a non-number marks that one response invalid
with the reason; it never stops the stage."""

from __future__ import annotations

from rebelflow.config.callables import load_callable
from rebelflow.rewards.base import Message, Reward, checked


class RuleReward:
    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_callable(spec)

    def score(self, items: list[tuple[list[Message], str]]) -> list[Reward]:
        out = []
        for messages, response in items:
            try:
                value = self.fn(messages, response)
            except Exception as exc:  # one bad row must not stop the stage; the reason is kept and counted
                out.append(Reward(float("nan"), f"{self.spec} raised {type(exc).__name__}: {exc}"[:300]))
                continue
            out.append(checked(value))
        return out
