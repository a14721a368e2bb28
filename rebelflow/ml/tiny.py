"""Tiny models built offline: a byte-level BPE tokenizer with a ChatML template, a random Llama policy and
a random Llama reward classifier. The demo and the tests use them; nothing is downloaded.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rebelflow.config.campaign import TinyModelConfig

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus_lines() -> list[str]:
    text = resources.files("rebelflow").joinpath("data/tiny_corpus.txt").read_text()
    return [line for line in text.splitlines() if line.strip()]


def build_tokenizer(vocab_size: int = 384, corpus: list[str] | None = None, specials: list[str] = SPECIAL_TOKENS,
                    eos: str = "<|im_end|>", pad: str | None = "<pad>", bos: str | None = None,
                    template: str = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer trained on the shipped corpus (deterministic); by default ChatML with
    EOS = <|im_end|> and a <pad> token (a rehearsal passes another family's special tokens and template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or corpus_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, unk_token=None, bos_token=bos)
    fast.chat_template = template
    return fast


def _llama_config(cfg: TinyModelConfig, tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.hidden_size * 2,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        **extra,
    )


def build_policy(out_dir: str | Path, cfg: TinyModelConfig | None = None) -> Path:
    """Save a random tiny Llama causal LM and its tokenizer (HF format) into `out_dir`."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    cfg = cfg or TinyModelConfig()
    tokenizer = build_tokenizer(cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(_llama_config(cfg, tokenizer))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def build_classifier(out_dir: str | Path, cfg: TinyModelConfig | None = None) -> Path:
    """Save a random tiny Llama sequence classifier (one label) with a real pad token into `out_dir`."""
    import torch
    from transformers import LlamaForSequenceClassification

    cfg = cfg or TinyModelConfig()
    tokenizer = build_tokenizer(cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model = LlamaForSequenceClassification(_llama_config(cfg, tokenizer, num_labels=1))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
