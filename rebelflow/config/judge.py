"""An LLM judge for evaluation (REFERENCE: "Evaluation as the papers report it"): two answers judged
pairwise in both orders, in MT-Bench's format (`[[A]]`, `[[B]]`, `[[C]]` for a tie) or AlpacaEval's
preference format (one label, the preference read from the judge's logprobs when it returns them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rebelflow.config.base import Section
from rebelflow.config.dialogue import OpenAIConfig


class JudgeConfig(Section):
    kind: Literal["openai", "callable"] = Field(
        ..., description="openai: an OpenAI-compatible endpoint (`vllm serve`, a hosted API); callable: Python")
    openai: OpenAIConfig | None = Field(None, description="the endpoint, for kind: openai")
    function: str | None = Field(
        None, description="kind: callable — `module:function` or `file.py:function`, called as fn(a, b) with "
                          "the two conversations (message lists ending with the answers) and returning the "
                          "judge's text (e.g. '... [[A]]') or a probability that A is better")
    format: Literal["pair", "preference"] = Field(
        "pair", description="pair: MT-Bench's pair-v2 prompt, verdict [[A]]/[[B]]/[[C]]; preference: one label "
                            "A or B, its probability from the judge's logprobs (AlpacaEval-style)")
    temperature: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(1024, ge=1, description="pair format: room for the judge's explanation")
    attempts: int = Field(3, ge=1, description="tries per judgment: an unparseable verdict is asked again, then "
                                               "counted as unjudged (never guessed)")

    @model_validator(mode="after")
    def _source(self) -> JudgeConfig:
        if self.kind == "openai" and self.openai is None:
            raise ValueError("judge kind 'openai' needs an openai section: {base_url: http://127.0.0.1:8000/v1, "
                             "model: <served name>} (api_key_env names the key's environment variable)")
        if self.kind == "callable" and not self.function:
            raise ValueError("judge kind 'callable' needs function: module:function (or file.py:function)")
        return self
