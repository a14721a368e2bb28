"""An OpenAI-compatible chat endpoint as a generation engine (e.g. `vllm serve` of the simulated user on
other machines). Requests run `concurrency` at a time; the client retries connection errors, 429 and 5xx
answers `max_retries` times with exponential backoff. The API key is read from the environment variable
named by `api_key_env`, never from the config, so it appears in no fingerprint, manifest or log.

The endpoint returns text, not token ids: use it where no tokens are trained on (the simulated user,
LLM judges).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from rebelflow.config.campaign import OpenAIConfig
from rebelflow.config.errors import ConfigError
from rebelflow.engines.base import Completion, Message, SamplingParams, sample_seed


class OpenAIEngine:
    def __init__(self, cfg: OpenAIConfig):
        try:
            import openai
        except ImportError:
            raise ConfigError("engine 'openai' needs the openai package: pip install openai") from None
        key = "EMPTY"
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise ConfigError(
                    f"[openai.api_key_env] the environment variable {cfg.api_key_env} is not set. Export the "
                    "endpoint's API key there, or set api_key_env: null for a server without keys."
                )
        self.cfg = cfg
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=key, max_retries=cfg.max_retries, timeout=cfg.timeout)

    def _one(self, messages: list[Message], params: SamplingParams, seed: int) -> Completion:
        reply = self.client.chat.completions.create(
            model=self.cfg.model, messages=messages, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens, seed=seed, n=1,
        )
        choice = reply.choices[0]
        finish = "length" if choice.finish_reason == "length" else "stop"
        return Completion(text=choice.message.content or "", token_ids=[], finish_reason=finish, seed=seed)

    def chat(self, messages: list[Message], temperature: float, max_tokens: int,
             top_logprobs: int = 0) -> tuple[str, dict[str, float] | None]:
        """One request (a judge's): the reply's text and, with top_logprobs, the most likely first tokens'
        logprobs (None when the server returns none)."""
        extra = {"logprobs": True, "top_logprobs": top_logprobs} if top_logprobs else {}
        reply = self.client.chat.completions.create(model=self.cfg.model, messages=messages, temperature=temperature,
                                                    max_tokens=max_tokens, n=1, **extra)
        choice = reply.choices[0]
        first = choice.logprobs.content[0] if top_logprobs and choice.logprobs and choice.logprobs.content else None
        return choice.message.content or "", None if first is None else {t.token: t.logprob for t in first.top_logprobs or []}

    def generate(self, prompts: list[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        jobs = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            done = list(pool.map(lambda ij: self._one(prompts[ij[0]], params, sample_seed(params.seed, ij[1])), jobs))
        out: list[list[Completion]] = [[] for _ in prompts]
        for (i, _), c in zip(jobs, done, strict=True):
            out[i].append(c)
        return out
