"""Loss masks on real chat templates: Llama-3-Instruct's (rebuilt offline) and ChatML."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rebelflow.config.errors import DataError
from rebelflow.ml.chat import end_of_turn_ids, tokenize_reply
from rebelflow.ml.tiny import build_tokenizer

# The chat template that ships with Meta-Llama-3-8B-Instruct.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def llama3():
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["You are helpful. Tell me about cats. Cats purr and sleep a lot."] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    fast.chat_template = LLAMA3_TEMPLATE
    return fast


def masked_text(tok, ids, mask):
    return tok.decode([t for t, m in zip(ids, mask, strict=True) if m])


def test_llama3_mask_is_the_reply_and_eot_only(llama3):
    context = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Tell me about cats."}]
    ids, mask, prompt_len = tokenize_reply(llama3, context, "Cats purr.")
    eot = llama3.convert_tokens_to_ids("<|eot_id|>")
    assert masked_text(llama3, ids, mask) == "Cats purr.<|eot_id|>"
    assert ids[-1] == eot and mask[-1] == 1
    assert mask == [0] * prompt_len + [1] * (len(ids) - prompt_len)
    assert ids.count(llama3.bos_token_id) == 1 and ids[0] == llama3.bos_token_id  # no duplicated BOS
    # end-of-turn found by name although the tokenizer's EOS is <|end_of_text|>
    assert eot in end_of_turn_ids(llama3)


def test_llama3_multi_turn_masks_only_the_last_reply(llama3):
    context = [
        {"role": "user", "content": "Tell me about cats."},
        {"role": "assistant", "content": "Cats sleep a lot."},
        {"role": "user", "content": "And?"},
    ]
    ids, mask, _ = tokenize_reply(llama3, context, "They purr.")
    assert masked_text(llama3, ids, mask) == "They purr.<|eot_id|>"
    assert sum(mask) == len(llama3("They purr.<|eot_id|>", add_special_tokens=False)["input_ids"])


def test_chatml_mask_stops_at_im_end_and_cuts_the_newline():
    tok = build_tokenizer(600)
    ids, mask, _ = tokenize_reply(tok, [{"role": "user", "content": "Hi"}], "Hello there")
    assert masked_text(tok, ids, mask) == "Hello there<|im_end|>"
    assert tok.decode(ids).endswith("<|im_start|>assistant\nHello there<|im_end|>")


def test_a_tokenizer_without_chat_template_is_a_clear_error():
    tok = build_tokenizer(600)
    tok.chat_template = None
    with pytest.raises(DataError, match="has no chat template"):
        tokenize_reply(tok, [{"role": "user", "content": "Hi"}], "Hello")
