"""Engine settings shared by generation and the simulated user: the dtype names and vLLM's options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rebelflow.config.base import Section

DTYPE = Literal["float32", "bfloat16", "float16"]


class VLLMConfig(Section):
    """vLLM engine options. Only max_model_len can change outputs; the rest tune speed and memory, so they
    are left out of fingerprints (lowering the memory fraction after an out-of-memory error keeps finished
    shards)."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="fraction of each GPU's memory for this engine")
    max_model_len: int | None = Field(None, ge=16, description="prompt + reply tokens (None: the model's maximum)")
    enforce_eager: bool = Field(False, description="no CUDA graphs: slower, starts faster, less memory")
    kv_cache_gib: int = Field(4, ge=1, description="CPU build only: KV-cache space (VLLM_CPU_KVCACHE_SPACE)")
    sleep: bool = Field(True, description="online rounds on a GPU: the engine sleeps between generations (weights "
                                          "to CPU memory, KV cache freed) so the trainer has the GPU; the CPU "
                                          "build has no sleep mode")
