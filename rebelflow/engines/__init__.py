"""Generation backends behind one interface: `hf` (transformers), `vllm` (offline vLLM) and `openai` (an
OpenAI-compatible chat endpoint, for the simulated user). The local backends take chat messages and
apply the chat template themselves, so every engine sees the same prompt tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from rebelflow.config.errors import ConfigError

if TYPE_CHECKING:
    from rebelflow.config.campaign import OpenAIConfig, VLLMConfig

Message = dict[str, str]
ENGINES = ("hf", "vllm", "openai")


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


def completion(tokenizer, eot: list[int], row: list[int], seed: int) -> Completion:
    """A completion from generated token ids: cut after the first end-of-turn token (kept in token_ids,
    left out of the text); no end-of-turn means the length limit ended it."""
    stop = next((k for k, t in enumerate(row) if t in eot), None)
    ids = row if stop is None else row[: stop + 1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Completion(text=text, token_ids=ids, finish_reason="length" if stop is None else "stop", seed=seed)


def load_engine(
    kind: str, model: str, dtype: str = "float32", revision: str | None = None,
    vllm: VLLMConfig | None = None, openai: OpenAIConfig | None = None,
) -> Engine:
    if kind == "hf":
        from rebelflow.engines.hf import HFEngine

        return HFEngine(model, dtype=dtype, revision=revision)
    if kind == "vllm":
        from rebelflow.config.campaign import VLLMConfig
        from rebelflow.engines.vllm import VLLMEngine

        return VLLMEngine(model, dtype=dtype, revision=revision, cfg=vllm or VLLMConfig())
    if kind == "openai":
        from rebelflow.engines.openai_compat import OpenAIEngine

        if openai is None:
            raise ConfigError("the openai engine needs an endpoint: base_url and model (see OpenAIConfig).")
        return OpenAIEngine(openai)
    raise ConfigError(f"unknown engine {kind!r}. Valid engines: {', '.join(ENGINES)}.")
