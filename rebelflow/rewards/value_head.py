"""value_head: a reward model saved as a backbone plus a linear value head in one checkpoint, with no model
class of its own in transformers — REBEL's TL;DR reward model (a Pythia backbone under `lm_backbone.`, a
`scalar_head` with bias, the backbone's config under `base_config` in config.json, and a `bias` that is
subtracted so the SFT reference summaries average 0) and Starling-RM-7B-alpha (a Llama-2-7b-chat backbone
under `transformer.`, a bias-free `v_head`, the config of Llama-2-7b-chat). The backbone is built from its
config, its tensors taken from the checkpoint by prefix (every backbone weight must be there: a wrong prefix
fails with the prefixes the checkpoint has), the head applied to the last hidden state at each row's last
token (rows right-padded, so the position comes from the attention mask)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rebelflow.config.campaign import RewardConfig
from rebelflow.config.errors import ConfigError
from rebelflow.ml.models import DTYPES, device
from rebelflow.rewards.base import Message, Reward
from rebelflow.rewards.classifier import batched_scores

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def checkpoint_folder(cfg: RewardConfig) -> Path:
    if Path(cfg.model).expanduser().is_dir():
        return Path(cfg.model).expanduser()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(cfg.model, revision=cfg.revision,
                                  allow_patterns=["*.json", "*.safetensors", "*.bin", "*.pt", "*.model", "*.txt"]))


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's weight files (safetensors, or torch pickles read weights-only)."""
    files = sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES) and not p.name.startswith("training"))
    if not files:
        raise ConfigError(f"[reward.model] {folder} has no weight file (*.safetensors, *.bin or *.pt).")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors.update(load_file(f))
        else:
            tensors.update(torch.load(f, map_location="cpu", weights_only=True))
    return tensors


def backbone_config(cfg: RewardConfig, folder: Path):
    from transformers import AutoConfig

    where = cfg.value_head.config
    own = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if where == "self":
        return AutoConfig.from_pretrained(folder)
    if where in own:
        nested = dict(own[where])
        return AutoConfig.for_model(nested.pop("model_type"), **nested)
    return AutoConfig.from_pretrained(where)


class ValueHeadReward:
    def __init__(self, cfg: RewardConfig):
        from transformers import AutoModel, AutoTokenizer

        from rebelflow.ml.chat import with_template

        self.cfg, v = cfg, cfg.value_head
        folder = checkpoint_folder(cfg)
        tensors = read_tensors(folder)
        state = {k[len(v.backbone_prefix):]: t for k, t in tensors.items() if k.startswith(v.backbone_prefix)}
        backbone = AutoModel.from_config(backbone_config(cfg, folder), dtype=DTYPES[cfg.dtype])
        missing = [k for k in backbone.state_dict() if k not in state and "rotary_emb" not in k]
        if missing:
            prefixes = sorted({k.split(".", 1)[0] + "." for k in tensors})
            raise ConfigError(
                f"[reward.value_head] {len(missing)} backbone weights are not in {cfg.model} under "
                f"'{v.backbone_prefix}' (e.g. {v.backbone_prefix}{missing[0]}); the checkpoint's prefixes are "
                f"{prefixes}. Set reward.value_head.backbone_prefix (and config) to match it."
            )
        backbone.load_state_dict(state, strict=False)
        if f"{v.head}.weight" not in tensors:
            raise ConfigError(f"[reward.value_head] no '{v.head}.weight' in {cfg.model}; set reward.value_head.head "
                              f"to the head's name (tensors not under the backbone: "
                              f"{sorted(k for k in tensors if not k.startswith(v.backbone_prefix))[:6]}).")
        weight, bias = tensors[f"{v.head}.weight"], tensors.get(f"{v.head}.bias")
        head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=DTYPES[cfg.dtype])
        head.load_state_dict({"weight": weight, **({"bias": bias} if bias is not None else {})})
        self.model = torch.nn.ModuleDict({"backbone": backbone, "head": head}).to(device()).eval()
        self.offset = self._offset(folder)
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or folder)
        self.tokenizer = with_template(tokenizer, cfg.chat_template)
        if cfg.pad_token is not None:
            self.tokenizer.pad_token = cfg.pad_token
        if self.tokenizer.pad_token_id is None:  # the read-out follows the attention mask: any id pads
            self.tokenizer.pad_token_id = self.tokenizer.eos_token_id

    def value_parts(self) -> tuple[torch.nn.Module, torch.nn.Linear, float]:
        """(backbone, head, offset): what a PPO value model started from this reward model copies."""
        return self.model["backbone"], self.model["head"], self.offset

    def _offset(self, folder: Path) -> float:
        bias = self.cfg.value_head.bias
        if bias is None or isinstance(bias, float | int):
            return float(bias or 0.0)
        own = json.loads((folder / "config.json").read_text())
        if bias not in own:
            raise ConfigError(f"[reward.value_head.bias] {bias!r} is not a key of {folder / 'config.json'}.")
        return float(own[bias])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        ids, mask = ids.to(dev), mask.to(dev)
        hidden = self.model["backbone"](input_ids=ids, attention_mask=mask).last_hidden_state
        last = mask.sum(dim=1) - 1
        values = self.model["head"](hidden[torch.arange(len(ids), device=dev), last])[:, 0]
        return values.float() - self.offset

    def score(self, items: list[tuple[list[Message], str]]) -> list[Reward]:
        return batched_scores(self.cfg, self.tokenizer, items, self.forward)
