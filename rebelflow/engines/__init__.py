"""Generation backends behind one interface: `hf` (transformers), `vllm` (offline vLLM) and `openai` (an
OpenAI-compatible chat endpoint, for the simulated user). The local backends take chat messages and
apply the chat template themselves, so every engine sees the same prompt tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rebelflow.config.errors import ConfigError
from rebelflow.engines.base import (
    ENGINES,
    Completion,
    Engine,
    Message,
    SamplingParams,
    completion,
    sample_seed,
)

if TYPE_CHECKING:
    from rebelflow.config.campaign import OpenAIConfig, VLLMConfig

__all__ = ["ENGINES", "Completion", "Engine", "Message", "SamplingParams", "completion", "load_engine", "sample_seed"]


def load_engine(
    kind: str, model: str, dtype: str = "float32", revision: str | None = None,
    vllm: VLLMConfig | None = None, openai: OpenAIConfig | None = None, chat_template: str | None = None,
) -> Engine:
    """`chat_template`: in place of the model's own (policy.chat_template)."""
    if kind == "hf":
        from rebelflow.engines.hf import HFEngine

        return HFEngine(model, dtype=dtype, revision=revision, chat_template=chat_template)
    if kind == "vllm":
        from rebelflow.config.campaign import VLLMConfig
        from rebelflow.engines.vllm import VLLMEngine

        return VLLMEngine(model, dtype=dtype, revision=revision, cfg=vllm or VLLMConfig(), chat_template=chat_template)
    if kind == "openai":
        from rebelflow.engines.openai_compat import OpenAIEngine

        if openai is None:
            raise ConfigError("the openai engine needs an endpoint: base_url and model (see OpenAIConfig).")
        return OpenAIEngine(openai)
    raise ConfigError(f"unknown engine {kind!r}. Valid engines: {', '.join(ENGINES)}.")
