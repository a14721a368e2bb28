"""`rebelflow mt-bench`: a policy's answers to MT-Bench and their single-answer grades (rebelflow.judges.mt_bench)."""

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
