"""The reference policy of online rounds: for top-k training, frozen copies of the top k layers, final
norm and LM head on the policy's own bottom layers give the logprobs of a full frozen copy, at any point of
training; LoRA's reference is the policy with its adapters off; `all` is a frozen copy."""

from __future__ import annotations

import copy

import pytest
import torch

from rebelflow.config.campaign import LoraConfig, TinyModelConfig
from rebelflow.ml.batching import batch_logps
from rebelflow.ml.models import set_trainable
from rebelflow.ml.reference import make_reference

TINY4 = TinyModelConfig(vocab_size=600, hidden_size=32, layers=4, heads=2, seed=1)
IDS = [[5, 17, 99, 240, 31, 7], [8, 8, 301, 12]]
MASKS = [[0, 0, 1, 1, 1, 1], [0, 1, 1, 1]]


@pytest.fixture()
def policy(tmp_path):
    from transformers import AutoModelForCausalLM

    from rebelflow.ml.tiny import build_policy

    model = AutoModelForCausalLM.from_pretrained(build_policy(tmp_path / "p", TINY4))
    model.config.tie_word_embeddings = False  # an untied head, as Llama-3 has: the reference must copy it
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return model.eval()


def perturb(model, names=("layers.2", "layers.3", "model.norm", "lm_head")):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in names):
                p.add_(torch.randn_like(p) * 0.05, alpha=1.0)


def logps(model):
    with torch.no_grad():
        return batch_logps(model, IDS, MASKS, 1.0, 0)


def test_the_top_layers_reference_equals_a_full_frozen_copy_after_training(policy):
    full = copy.deepcopy(policy)
    model, _ = set_trainable(policy, 2)
    reference = make_reference(model, 2)
    before = reference.logps(IDS, MASKS, 1.0, 0)
    perturb(model)  # what updates of the top two layers, the norm and the head do
    assert not torch.allclose(logps(model), logps(full))  # the policy moved
    torch.testing.assert_close(reference.logps(IDS, MASKS, 1.0, 0), logps(full), rtol=0, atol=1e-6)
    torch.testing.assert_close(reference.logps(IDS, MASKS, 1.0, 0), before, rtol=0, atol=0)
    ref_layers, layers = reference.model.get_decoder().layers, model.get_decoder().layers
    assert ref_layers[0] is layers[0] and ref_layers[1] is layers[1]  # the bottom is shared, not copied
    assert reference.model.get_input_embeddings() is model.get_input_embeddings()
    assert ref_layers[3] is not layers[3]
    assert all(not p.requires_grad for n, p in reference.model.named_parameters() if "layers.3" in n)


def test_the_lora_reference_is_the_policy_with_adapters_off(policy):
    full = copy.deepcopy(policy)
    model, _ = set_trainable(policy, "lora", LoraConfig(r=4, alpha=8, dropout=0.0))
    reference = make_reference(model, "lora")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)  # adapters that change the outputs
    assert not torch.allclose(logps(model), logps(full))
    torch.testing.assert_close(reference.logps(IDS, MASKS, 1.0, 0), logps(full), rtol=0, atol=1e-5)


def test_the_full_reference_is_a_frozen_copy(policy):
    reference = make_reference(policy, "all")
    before = reference.logps(IDS, MASKS, 1.0, 0)
    perturb(policy, ("layers",))
    torch.testing.assert_close(reference.logps(IDS, MASKS, 1.0, 0), before, rtol=0, atol=0)


def test_a_later_rounds_top_layers_reference_is_the_campaigns_starting_model(policy):
    """Round 2 starts from round 1's policy; its reference must still be the starting model."""
    start = copy.deepcopy(policy)
    perturb(policy)  # round 1 trained the top layers, norm and head
    model, _ = set_trainable(policy, 2)
    reference = make_reference(model, 2, initial=start)
    torch.testing.assert_close(reference.logps(IDS, MASKS, 1.0, 0), logps(start), rtol=0, atol=1e-6)
    assert reference.model.get_decoder().layers[0] is model.get_decoder().layers[0]
