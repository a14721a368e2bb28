"""A dataset user: the later user turns come from the prompt's row (REFUEL setting two)."""

from __future__ import annotations

from rebelflow.users.base import UserRequest, UserTurn


class DatasetUser:
    def next_turns(self, requests: list[UserRequest], seed: int) -> list[UserTurn]:
        out = []
        for req in requests:
            turns = req.data_turns or []
            if req.turn - 1 < len(turns) and turns[req.turn - 1].strip():
                out.append(UserTurn(turns[req.turn - 1]))
            else:
                out.append(UserTurn(None, f"the data has {len(turns)} later user turns; turn {req.turn} is missing"))
        return out
