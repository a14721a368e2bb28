"""The value_head reward backend: a backbone and a linear head read from one checkpoint's files, laid out as
REBEL's TL;DR reward model (GPT-NeoX under `lm_backbone.`, `scalar_head` with bias, the backbone's config
under `base_config`, a `bias` subtracted) or as Starling-RM (Llama under `transformer.` beside other keys, a
bias-free `v_head` in a torch pickle, the tokenizer elsewhere). Scores equal the backbone and head computed
by hand, batched or one at a time; a wrong layout fails naming what the checkpoint holds."""

from __future__ import annotations

import json

import pytest
import torch

from rebelflow.config.campaign import RewardConfig, ValueHeadConfig
from rebelflow.config.errors import ConfigError
from rebelflow.rehearsal.models import stand_in
from rebelflow.rewards import load_reward

ITEMS = [([{"role": "user", "content": "SUBREDDIT: r/cats\n\nPOST: my cat sleeps all day\n\nTL;DR:"}], " cat sleeps"),
         ([{"role": "user", "content": "Tell me about rain."}], "Rain is water falling from clouds, often."),
         ([{"role": "user", "content": "Hi"}], "Hello!")]
TLDR = ValueHeadConfig(backbone_prefix="lm_backbone.", head="scalar_head", config="base_config", bias="bias")


def by_hand(backbone, weight, bias, offset, tokenizer, text: str) -> float:
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        hidden = backbone(input_ids=ids).last_hidden_state[0, -1]
    return float(hidden @ weight[0] + (bias[0] if bias is not None else 0.0)) - offset


def test_the_tldr_layout_scores_as_the_backbone_and_head_by_hand(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = stand_in("value_head", "vwxyzjn/EleutherAI_pythia-2.8b-deduped__reward__tldr", tmp_path, "reward", 2,
                      "float32", layout=TLDR)
    cfg = RewardConfig(backend="value_head", model=str(folder), value_head=TLDR, chat_template="plain", batch_size=2)
    reward = load_reward(cfg)
    got = [r.value for r in reward.score(ITEMS)]
    assert got == pytest.approx([r.value for item in ITEMS for r in reward.score([item])], abs=1e-5)  # padding-free

    own = json.loads((folder / "config.json").read_text())
    nested = dict(own["base_config"])
    assert nested["model_type"] == "gpt_neox" and own["bias"] == 0.25
    tensors = load_file(folder / "model.safetensors")
    backbone = AutoModel.from_config(AutoConfig.for_model(nested.pop("model_type"), **nested))
    backbone.load_state_dict({k[len("lm_backbone."):]: v for k, v in tensors.items() if k.startswith("lm_backbone.")})
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert not tokenizer.chat_template  # as a base model's: the plain template gives the text
    expected = [by_hand(backbone.eval(), tensors["scalar_head.weight"], tensors["scalar_head.bias"], 0.25, tokenizer,
                        messages[0]["content"] + response + tokenizer.eos_token) for messages, response in ITEMS]
    assert got == pytest.approx(expected, abs=1e-5)


def test_the_starling_layout_reads_a_pickle_and_a_tokenizer_from_elsewhere(tmp_path, tiny_policy):
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from rebelflow.ml.chat import render

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)
    backbone = LlamaModel(config).eval()
    head = torch.randn(1, 32)
    checkpoint = {**{f"transformer.{k}": v for k, v in backbone.state_dict().items()},
                  **{f"model.model.{k}": v for k, v in backbone.state_dict().items()},  # the same modules twice
                  "model.lm_head.weight": torch.randn(len(tokenizer), 32), "v_head.weight": head}
    folder = tmp_path / "starling"
    folder.mkdir()
    torch.save(checkpoint, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(config.to_json_string())
    layout = ValueHeadConfig(backbone_prefix="transformer.", head="v_head")
    cfg = RewardConfig(backend="value_head", model=str(folder), tokenizer=tiny_policy, value_head=layout, batch_size=3)
    got = [r.value for r in load_reward(cfg).score(ITEMS)]
    expected = [by_hand(backbone, head, None, 0.0, tokenizer,
                        render(tokenizer, [*messages, {"role": "assistant", "content": response}], False))
                for messages, response in ITEMS]
    assert got == pytest.approx(expected, abs=1e-5)

    wrong = cfg.model_copy(update={"value_head": layout.model_copy(update={"backbone_prefix": "backbone."})})
    with pytest.raises(ConfigError, match=r"not in .* under 'backbone\.'.*prefixes are \['model\.', 'transformer\.', 'v_head\.'\]"):
        load_reward(wrong)
    with pytest.raises(ConfigError, match=r"no 'score.weight'"):
        load_reward(cfg.model_copy(update={"value_head": layout.model_copy(update={"head": "score"})}))


def test_a_value_head_reward_needs_its_layout():
    with pytest.raises(ValueError, match="value_head: \\{backbone_prefix, head, config, bias\\}"):
        RewardConfig(backend="value_head", model="some/rm")
