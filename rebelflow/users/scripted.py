"""A scripted user: `fn(messages) -> str`, given the dialogue so far (ending with an assistant reply)."""

from __future__ import annotations

from rebelflow.config.callables import load_callable
from rebelflow.users.base import UserRequest, UserTurn


class ScriptedUser:
    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_callable(spec, "dialogue.user.function")

    def next_turns(self, requests: list[UserRequest], seed: int) -> list[UserTurn]:
        out = []
        for req in requests:
            try:
                text = self.fn(req.messages)
            except Exception as exc:  # one failing dialogue must not stop the others; the reason is kept
                out.append(UserTurn(None, f"{self.spec} raised {type(exc).__name__}: {exc}"[:300]))
                continue
            if not isinstance(text, str) or not text.strip():
                out.append(UserTurn(None, f"{self.spec} returned an empty user turn"))
            else:
                out.append(UserTurn(text))
        return out
