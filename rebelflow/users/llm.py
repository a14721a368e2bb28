"""An LLM user: a chat model plays the user. It gets the transcript rendered as plain text inside one user
message (the configurable template) and answers with a justification line and a `Question:` line; the
next user turn is the text after the last `Question:`, or the whole answer when there is none."""

from __future__ import annotations

from rebelflow.config.campaign import UserConfig
from rebelflow.engines import SamplingParams, load_engine
from rebelflow.users.base import Message, UserRequest, UserTurn


def render_transcript(messages: list[Message]) -> str:
    return "\n".join(f"### {m['role']}: {m['content']}" for m in messages if m["role"] != "system")


def parse_reply(text: str) -> UserTurn:
    """The text after the last `Question:` (whole output as fallback); empty output is invalid."""
    head, sep, tail = text.rpartition("Question:")
    question = (tail if sep else text).strip()
    if not question:
        reason = "the user model wrote nothing after 'Question:'" if sep else "the user model wrote nothing"
        return UserTurn(None, reason)
    return UserTurn(question)


class LLMUser:
    def __init__(self, cfg: UserConfig):
        self.cfg = cfg
        self.engine = load_engine(cfg.engine or "hf", cfg.model, cfg.dtype, cfg.revision, vllm=cfg.vllm, openai=cfg.openai)

    def next_turns(self, requests: list[UserRequest], seed: int) -> list[UserTurn]:
        prompts = [
            [{"role": "user", "content": self.cfg.template.format(transcript=render_transcript(r.messages))}]
            for r in requests
        ]
        params = SamplingParams(1, self.cfg.temperature, self.cfg.top_p, self.cfg.max_new_tokens, seed)
        return [parse_reply(c[0].text) for c in self.engine.generate(prompts, params)]
