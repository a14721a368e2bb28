"""The armorm backend on a tiny model that, like ArmoRM, ships its own code and answers with `.score`."""

import sys

import pytest
import torch

from rebelflow.config.campaign import RewardConfig
from rebelflow.config.errors import ConfigError
from rebelflow.ml.tiny import build_tokenizer
from rebelflow.rewards import load_reward
from tests.conftest import make_config

MODELING = '''
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


class FakeArmoConfig(PretrainedConfig):
    model_type = "fake_armo"

    def __init__(self, vocab_size=600, **kwargs):
        self.vocab_size = vocab_size
        super().__init__(**kwargs)


@dataclass
class ArmoOutput(ModelOutput):
    score: torch.FloatTensor = None
    logits: torch.FloatTensor = None


class FakeArmoRM(PreTrainedModel):
    config_class = FakeArmoConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, 1)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        values = self.embed(input_ids).squeeze(-1) * attention_mask
        score = values.sum(-1) / attention_mask.sum(-1)
        return ArmoOutput(score=score[:, None], logits=torch.full_like(score[:, None], -2.0))
'''


@pytest.fixture(scope="module")
def armo_dir(tmp_path_factory):
    src = tmp_path_factory.mktemp("armo_src")
    (src / "modeling_fake_armo.py").write_text(MODELING)
    sys.path.insert(0, str(src))
    try:
        import modeling_fake_armo as mod
    finally:
        sys.path.remove(str(src))
    mod.FakeArmoConfig.register_for_auto_class()
    mod.FakeArmoRM.register_for_auto_class("AutoModelForSequenceClassification")
    tok = build_tokenizer(600)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("armo")
    mod.FakeArmoRM(mod.FakeArmoConfig(vocab_size=len(tok))).save_pretrained(out)
    tok.save_pretrained(out)
    return out, tok


def test_armorm_reads_score_not_logits_and_batches_like_one_at_a_time(armo_dir):
    folder, tok = armo_dir
    items = [([{"role": "user", "content": f"What is {i} + 1?"}], "x" * (i + 1)) for i in range(7)]
    results = []
    for batch_size in (1, 4):
        cfg = RewardConfig(backend="armorm", model=str(folder), trust_remote_code=True, revision="main",
                           batch_size=batch_size)
        results.append([r.value for r in load_reward(cfg).score(items)])
    assert results[0] == pytest.approx(results[1], abs=1e-6)
    assert -2.0 not in results[0] and len(set(results[0])) == 7


def test_armorm_needs_an_explicit_trust_and_a_pinned_revision(tmp_path, prompts_file):
    with pytest.raises(ConfigError, match="set reward.trust_remote_code: true and pin reward.revision"):
        make_config(tmp_path, prompts_file, reward={"backend": "armorm", "function": None, "model": "RLHFlow/ArmoRM"})
    with pytest.raises(ConfigError, match="pin reward.revision"):
        make_config(tmp_path, prompts_file,
                    reward={"backend": "armorm", "function": None, "model": "x", "trust_remote_code": True})
