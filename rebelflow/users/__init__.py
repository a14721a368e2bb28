"""Simulated users for multi-turn (REFUEL) campaigns, behind one interface, chosen by `dialogue.user.kind`:

- `scripted`: a Python callable `module:function(messages) -> str` (tests, synthetic tasks);
- `llm`: a chat model that reads the transcript as plain text inside one user message and answers with a
  justification line and a `Question:` line; the text after the last `Question:` is the next user turn;
- `dataset`: user turns fixed by the data (a prompts column holding the later user messages).

A user that fails (raises, returns nothing) marks that dialogue invalid with the reason. Simulated-user
tokens are never trained on: the prepare stage masks only the policy's reply at the branch turn.
"""

from __future__ import annotations

from rebelflow.config.campaign import UserConfig
from rebelflow.users.base import Message, SimulatedUser, UserRequest, UserTurn

__all__ = ["Message", "SimulatedUser", "UserRequest", "UserTurn", "load_user", "user_identity"]


def load_user(cfg: UserConfig) -> SimulatedUser:
    if cfg.kind == "scripted":
        from rebelflow.users.scripted import ScriptedUser

        return ScriptedUser(cfg.function)
    if cfg.kind == "llm":
        from rebelflow.users.llm import LLMUser

        return LLMUser(cfg)
    from rebelflow.users.dataset import DatasetUser

    return DatasetUser()


def user_identity(cfg: UserConfig) -> str:
    """What determines the user's behaviour, for fingerprints."""
    if cfg.kind == "scripted":
        from rebelflow.config.callables import source_hash

        return source_hash(cfg.function, "dialogue.user.function")
    if cfg.kind == "llm" and cfg.engine == "openai":
        return f"openai:{cfg.openai.model}"
    if cfg.kind == "llm":
        from rebelflow.store.refs import model_identity

        return model_identity(cfg.model, cfg.revision)
    return f"dataset:{cfg.turns_column}"
