"""The evaluation commands' settings: `rebelflow mt-bench` (a policy's answers to MT-Bench and their single-answer
grades, judges.mt_bench) and `rebelflow alpaca-eval` (a policy against reference outputs, raw and length-controlled
win rates, judges.length_control)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rebelflow.config.base import Section
from rebelflow.config.campaign import LauncherConfig, StoreConfig
from rebelflow.config.engines import DTYPE, VLLMConfig
from rebelflow.config.judge import JudgeConfig


class MTBenchConfig(Section):
    policy: str = Field(..., description="a model artifact of the store (id or unique prefix), a model folder or a Hub id")
    judge: JudgeConfig = Field(..., description="the grader: an OpenAI-compatible endpoint or fn(conversation, reference)")
    engine: Literal["hf", "vllm"] = "hf"
    vllm: VLLMConfig = VLLMConfig()
    max_new_tokens: int = Field(1024, ge=1, description="per answer (FastChat's default)")
    questions: int | None = Field(None, ge=1, description="only the first N of the 80 questions")
    dtype: DTYPE = "float32"
    launcher: LauncherConfig = LauncherConfig()
    store: StoreConfig = StoreConfig()


class AlpacaEvalConfig(Section):
    policy: str = Field(..., description="a model artifact of the store (id or unique prefix), a model folder or a Hub id")
    reference: str = Field(..., description="the reference outputs: AlpacaEval's JSON or JSONL of {instruction, output}")
    judge: JudgeConfig = Field(..., description="the judge, in the preference format for the LC win rate")
    limit: int | None = Field(None, ge=1, description="only the first N instructions")
    engine: Literal["hf", "vllm"] = "hf"
    vllm: VLLMConfig = VLLMConfig()
    temperature: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(2048, ge=1)
    dtype: DTYPE = "float32"
    launcher: LauncherConfig = LauncherConfig()
    store: StoreConfig = StoreConfig()
