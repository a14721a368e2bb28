"""The engine interface: sampling parameters, completions, the Engine protocol, per-sample seeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    pass

Message = dict[str, str]
ENGINES = ("hf", "vllm", "openai")


@dataclass(frozen=True)
class SamplingParams:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int  # sample j uses seed + 50 * j
    # online rounds' forced length: sample max_new_tokens, end-of-turn allowed but not stopping (the
    # completion is then cut after the first one), as the reference TL;DR code does (hf, vllm)
    ignore_end_of_turn: bool = False


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # generated tokens, including the end-of-turn token when there is one
    finish_reason: Literal["stop", "length"]  # stop: ended with end-of-turn; length: hit max_new_tokens
    seed: int


class Engine(Protocol):
    def generate(self, prompts: list[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        """For each conversation, `params.n` completions of the next assistant turn."""
        ...


def sample_seed(base: int, j: int) -> int:
    return base + 50 * j


def completion(tokenizer, eot: list[int], row: list[int], seed: int) -> Completion:
    """A completion from generated token ids: cut after the first end-of-turn token (kept in token_ids,
    left out of the text); no end-of-turn means the length limit ended it."""
    stop = next((k for k, t in enumerate(row) if t in eot), None)
    ids = row if stop is None else row[: stop + 1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Completion(text=text, token_ids=ids, finish_reason="length" if stop is None else "stop", seed=seed)
