"""The simulated-user interface: a request per pending dialogue, the next user turn (or why there is none)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

Message = dict[str, str]


@dataclass(frozen=True)
class UserRequest:
    messages: list[Message]  # the dialogue so far, ending with an assistant reply
    turn: int  # index of the user turn to write (1 = the first one after the prompt)
    data_turns: list[str] | None = None  # dataset users: the row's later user turns


@dataclass(frozen=True)
class UserTurn:
    text: str | None
    invalid_reason: str | None = None


class SimulatedUser(Protocol):
    def next_turns(self, requests: list[UserRequest], seed: int) -> list[UserTurn]:
        """The next user message of every dialogue, in one batched call."""
        ...
