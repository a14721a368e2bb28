"""transformers generation engine (CPU or a single GPU): batched, left-padded, one seed per sample index.

Sample j of every prompt in a batch is drawn with `torch.manual_seed(seed + 50*j)`, the reference
code's per-sample seeds, so samples differ from each other and a re-run reproduces them exactly.
"""

from __future__ import annotations

import torch

from rebelflow.engines.base import Completion, Message, SamplingParams, completion, sample_seed
from rebelflow.ml.chat import end_of_turn_ids, prompt_ids, with_template
from rebelflow.ml.models import DTYPES


class HFEngine:
    def __init__(self, model: str, dtype: str = "float32", revision: str | None = None, chat_template: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = with_template(AutoTokenizer.from_pretrained(model, revision=revision), chat_template)
        loaded = AutoModelForCausalLM.from_pretrained(model, revision=revision, dtype=DTYPES[dtype])
        self._use(loaded.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer)

    @classmethod
    def resident(cls, model, tokenizer) -> HFEngine:
        """An engine on a model already in memory (an online round's policy: it samples with the weights
        being trained; the caller puts it in eval mode for sampling)."""
        engine = cls.__new__(cls)
        engine._use(model, tokenizer)
        return engine

    def _use(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.eot = end_of_turn_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot[0]

    @torch.inference_mode()
    def generate(self, prompts: list[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        encoded = [prompt_ids(self.tokenizer, messages) for messages in prompts]
        width = max(len(ids) for ids in encoded)
        device = self.model.device
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
        out: list[list[Completion]] = [[] for _ in prompts]
        for j in range(params.n):
            seed = sample_seed(params.seed, j)
            torch.manual_seed(seed)
            generated = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                **self._sampling(params),
                max_new_tokens=params.max_new_tokens,
                eos_token_id=None if params.ignore_end_of_turn else self.eot,
                pad_token_id=self.pad_id,
            )[:, width:]
            for i, row in enumerate(generated.tolist()):
                out[i].append(completion(self.tokenizer, self.eot, row, seed))
        return out

    @staticmethod
    def _sampling(params: SamplingParams) -> dict:
        if params.temperature == 0:  # greedy: every sample is the same
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
