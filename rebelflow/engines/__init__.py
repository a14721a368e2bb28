"""Generation backends behind one interface. `hf` (transformers) is here; vLLM and OpenAI-compatible
endpoints implement the same Protocol later. Backends take chat messages and apply the chat template
themselves, so every engine sees the same prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from rebelflow.errors import ConfigError

Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int  # sample j uses seed + 50 * j


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


def load_engine(kind: str, model: str, dtype: str = "float32", revision: str | None = None) -> Engine:
    if kind == "hf":
        from rebelflow.engines.hf import HFEngine

        return HFEngine(model, dtype=dtype, revision=revision)
    raise ConfigError(f"[generate.engine] unknown engine {kind!r}. Valid engines: hf.")
