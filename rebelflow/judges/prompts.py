"""What a judge is asked. The pair format uses MT-Bench's judge prompts as FastChat ships them
(rebelflow/data/mt_bench/judge_prompts.jsonl, Apache-2.0): `pair-v2` for one reply after a question, and
`pair-v2-multi-turn`'s instructions (asked about the last user question rather than "the second") with both
conversations written out turn by turn (any number of turns; MT-Bench's own template has exactly two). The preference format asks for one label, A or B."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

Message = dict[str, str]

PREFERENCE_SYSTEM = (
    "You compare the answers two AI assistants gave in the same conversation and say which is better: more "
    "helpful, correct and relevant to what the user asked. The order in which they are shown and their length "
    "must not sway you. Reply with a single letter: A if assistant A's answer is better, B if assistant B's is."
)


@cache
def mt_bench_prompts() -> dict[str, dict]:
    text = resources.files("rebelflow").joinpath("data/mt_bench/judge_prompts.jsonl").read_text()
    return {p["name"]: p for p in map(json.loads, text.splitlines())}


def single_reply(a: list[Message], b: list[Message]) -> bool:
    """Both conversations are one context followed by one reply, the same context."""
    return (a[:-1] == b[:-1] and a[-1]["role"] == b[-1]["role"] == "assistant"
            and sum(m["role"] == "assistant" for m in a) == 1)


def context_text(messages: list[Message]) -> str:
    """A context as the user question: the user message alone, or the whole context turn by turn."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"### {m['role'].capitalize()}:\n{m['content']}" for m in messages)


def conversation_text(messages: list[Message], name: str) -> str:
    turns = "\n\n".join(f"### {'Assistant ' + name if m['role'] == 'assistant' else m['role'].capitalize()}:\n"
                        f"{m['content']}" for m in messages)
    return (f"<|The Start of Assistant {name}'s Conversation with User|>\n\n{turns}\n\n"
            f"<|The End of Assistant {name}'s Conversation with User|>")


def judge_messages(fmt: str, a: list[Message], b: list[Message]) -> list[Message]:
    """The chat request that asks the judge to compare conversation a (assistant A) with b (assistant B)."""
    if fmt == "preference":
        if single_reply(a, b):
            body = (f"[Conversation]\n{context_text(a[:-1])}\n\n[Assistant A's answer]\n{a[-1]['content']}\n\n"
                    f"[Assistant B's answer]\n{b[-1]['content']}")
        else:
            body = f"{conversation_text(a, 'A')}\n\n\n{conversation_text(b, 'B')}"
        return [{"role": "system", "content": PREFERENCE_SYSTEM}, {"role": "user", "content": body}]
    if single_reply(a, b):
        p = mt_bench_prompts()["pair-v2"]
        body = p["prompt_template"].format(question=context_text(a[:-1]), answer_a=a[-1]["content"],
                                           answer_b=b[-1]["content"])
    else:  # MT-Bench's instructions name "the second user question": here it is the last, at any turn
        p = mt_bench_prompts()["pair-v2-multi-turn"]
        body = f"{conversation_text(a, 'A')}\n\n\n{conversation_text(b, 'B')}"
        return [{"role": "system", "content": p["system_prompt"].replace("the second user question", "the last user question")},
                {"role": "user", "content": body}]
    return [{"role": "system", "content": p["system_prompt"]}, {"role": "user", "content": body}]
