"""The transformers engine on a model already in memory (an online round's policy), and forced-length
sampling: end-of-turn may be sampled but does not stop generation; the completion is cut after it."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from rebelflow.engines.base import SamplingParams
from rebelflow.engines.hf import HFEngine


class EndOfTurnEveryThird(LogitsProcessor):
    def __init__(self, eot: int):
        self.eot = eot

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] % 3 == 0:
            scores[:] = -1e9
            scores[:, self.eot] = 0
        return scores


def test_forced_length_samples_past_end_of_turn_and_cuts_after_it(tiny_policy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_policy).eval()
    engine = HFEngine.resident(model, AutoTokenizer.from_pretrained(tiny_policy))
    assert engine.model is model  # samples with the very weights being trained
    lengths = []
    generate = model.generate

    def recording(**kw):
        out = generate(logits_processor=LogitsProcessorList([EndOfTurnEveryThird(engine.eot[0])]), **kw)
        lengths.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    model.generate = recording
    prompt = [[{"role": "user", "content": "Say something."}]]
    stopped = engine.generate(prompt, SamplingParams(1, 1.0, 1.0, 12, 0))[0][0]
    forced = engine.generate(prompt, SamplingParams(1, 1.0, 1.0, 12, 0, ignore_end_of_turn=True))[0][0]
    assert lengths[0] < 12 and lengths[1] == 12  # forced: all 12 tokens sampled
    assert forced.finish_reason == stopped.finish_reason == "stop"
    assert forced.token_ids[-1] == engine.eot[0] and len(forced.token_ids) == len(stopped.token_ids)
    assert torch.is_grad_enabled()  # the engine's inference mode does not leak into training
