"""Multi-turn (REFUEL) configuration: the dialogue section and its simulated user (scripted, an LLM on
a local engine or an OpenAI-compatible endpoint, or later user turns read from the dataset)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rebelflow.config.base import Section
from rebelflow.config.engines import DTYPE, VLLMConfig


class OpenAIConfig(Section):
    """An OpenAI-compatible chat endpoint (e.g. `vllm serve`), used for the simulated user."""

    base_url: str = Field(..., description="e.g. http://127.0.0.1:8000/v1")
    model: str = Field(..., description="the model name the server serves")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable with the key (None: no key)")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    max_retries: int = Field(5, ge=0, description="retries with exponential backoff on connection errors, 429 and 5xx")
    timeout: float = Field(600.0, gt=0, description="seconds per request")


DEFAULT_USER_TEMPLATE = (
    "You are playing the user in a conversation with an AI assistant. Here is the conversation so far:\n\n"
    "{transcript}\n\n"
    "Continue as the user would: first write one line that says why you ask what you ask next, then a line "
    "that starts with 'Question:' followed by your next message to the assistant."
)


class UserConfig(Section):
    """The simulated user of a multi-turn campaign. Its tokens are never trained on."""

    kind: Literal["scripted", "llm", "dataset"] = "scripted"
    function: str | None = Field(None, description="scripted: module:function(messages) -> next user message")
    model: str | None = Field(None, description="llm: a local folder or Hub id of a chat model")
    revision: str | None = None
    engine: Literal["hf", "vllm", "openai"] | None = Field(
        None, description="llm: how the user model runs (default: the policy's generate.engine)"
    )
    vllm: VLLMConfig = VLLMConfig(gpu_memory_utilization=0.45)
    openai: OpenAIConfig | None = Field(None, description="llm with engine openai: the endpoint")
    template: str = Field(DEFAULT_USER_TEMPLATE, description="llm: must contain {transcript}")
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(1024, ge=1)
    seed: int = 0
    dtype: DTYPE = "float32"
    turns_column: str | None = Field(
        None, description="dataset: the prompts column with the later user turns (strings, messages or HH text)"
    )
    max_invalid_fraction: float = Field(
        0.1, ge=0, le=1, description="stop when more dialogues than this lose a user turn (a broken user)"
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> UserConfig:
        needed = {"scripted": ("function", "module:function(messages) -> str"),
                  "llm": ("model", "a local folder or Hub id of the user model"),
                  "dataset": ("turns_column", "the prompts column with the later user turns")}[self.kind]
        if getattr(self, needed[0]) is None and not (self.kind == "llm" and self.engine == "openai"):
            raise ValueError(f"user kind '{self.kind}' needs {needed[0]}: {needed[1]}.")
        if self.kind == "llm" and "{transcript}" not in self.template:
            raise ValueError("the user template must contain {transcript}, where the conversation goes.")
        if self.kind == "llm" and self.engine == "openai" and self.openai is None:
            raise ValueError(
                "user engine 'openai' needs the endpoint: set dialogue.user.openai: {base_url: ..., model: ...}."
            )
        return self


class DialogueConfig(Section):
    """Multi-turn (REFUEL) campaigns: set this section; without it a campaign is single-turn REBEL."""

    turns: int = Field(5, ge=1, description="assistant replies per dialogue (H)")
    horizon: Literal["uniform", "last"] | int = Field(
        "uniform", description="L: uniform over 0..turns-1, 'last' (the dialogue's last turn), or a fixed turn index"
    )
    branch: Literal["uniform", "last"] = Field("uniform", description="h: uniform over 0..L, or h = L")
    seed: int = 0
    user: UserConfig

    @model_validator(mode="after")
    def _horizon(self) -> DialogueConfig:
        if isinstance(self.horizon, int) and not 0 <= self.horizon < self.turns:
            raise ValueError(
                f"horizon ({self.horizon}) must be 'uniform', 'last' or a turn index 0..{self.turns - 1}."
            )
        return self
