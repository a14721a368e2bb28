"""The reward interface: a Reward per (conversation, response), the backend protocol, validity checks, and
sharing a backend over the ranks of a launch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

Message = dict[str, str]


@dataclass(frozen=True)
class Reward:
    value: float  # NaN when invalid
    invalid_reason: str | None = None


class RewardBackend(Protocol):
    def score(self, items: list[tuple[list[Message], str]]) -> list[Reward]:
        """One Reward per (conversation so far, assistant response)."""
        ...


def checked(value: object) -> Reward:
    """Turn a backend's raw output into a Reward, marking non-numbers and NaN/inf as invalid."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Reward(math.nan, f"reward is {type(value).__name__}, not a number")
    if not math.isfinite(value):
        return Reward(math.nan, f"reward is {value}")
    return Reward(float(value))


class RankSharded:
    """A backend shared out over the ranks of a multi-process launch (one per GPU): each rank scores every
    ranks-th item (so each gets a similar mix of lengths) and every rank gets all rewards back in order."""

    def __init__(self, backend: RewardBackend, ranks):
        self.backend, self.ranks = backend, ranks

    def score(self, items: list[tuple[list[Message], str]]) -> list[Reward]:
        from rebelflow.ml.distributed import gather_lists

        mine = self.backend.score(items[self.ranks.index :: self.ranks.count])
        out: list[Reward] = [Reward(math.nan)] * len(items)
        for index, part in enumerate(gather_lists(self.ranks, mine)):
            out[index :: self.ranks.count] = part
        return out
