"""Chat-template rendering: token ids and loss masks for one assistant reply.

The reply's tokens are found by rendering the context with the generation prompt (the prefix) and the
context plus the reply, then tokenizing the prefix and the rest separately, so a merge across the
boundary cannot shift the mask. The mask covers the reply's content and its end-of-turn token, and
nothing else: system and user turns, earlier replies, role headers and anything the template writes
after the end-of-turn token (e.g. ChatML's trailing newline) are 0 or cut.
"""

from __future__ import annotations

from typing import Any

from rebelflow.config.errors import DataError

Message = dict[str, str]

# End-of-turn tokens of common chat templates, used when the tokenizer's EOS is something else.
_EOT_NAMES = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>", "<|endoftext|>", "</s>")


# A model without a chat format (a base or plain SFT model, e.g. REBEL's Pythia TL;DR policy): the prompt's
# text as it is, the reply right after it, closed by EOS. `chat_template: plain` in the policy or reward section.
PLAIN_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
)


def template_text(chat_template: str) -> str:
    """`plain` or a Jinja chat template as it is."""
    return PLAIN_TEMPLATE if chat_template == "plain" else chat_template


def with_template(tokenizer: Any, chat_template: str | None) -> Any:
    """The tokenizer with `chat_template` (when set) in place of its own."""
    if chat_template is not None:
        tokenizer.chat_template = template_text(chat_template)
    return tokenizer


def policy_tokenizer(path: str, policy: Any) -> Any:
    """The tokenizer of a policy (an ArtifactRef): from its folder, with the campaign's chat template when
    the policy is an external model that names one (a trained policy saved it with its tokenizer)."""
    from transformers import AutoTokenizer

    return with_template(AutoTokenizer.from_pretrained(path, revision=policy.revision), policy.chat_template)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that close an assistant turn: the EOS token and known end-of-turn tokens in the vocab."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids += [vocab[name] for name in _EOT_NAMES if name in vocab and vocab[name] not in ids]
    return ids


def render(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'the policy')} has no chat template. "
            "Use an instruct/chat model, or set policy.chat_template (reward.chat_template for a reward model): "
            "`plain` for a model that continues the prompt's text, or a Jinja chat template."
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(tokenizer: Any, text: str) -> list[int]:
    # The template already holds BOS where the model wants it; adding special tokens would duplicate it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Token ids of a conversation followed by the assistant generation prompt."""
    return encode(tokenizer, render(tokenizer, messages, add_generation_prompt=True))


def tokenize_reply(tokenizer: Any, context: list[Message], reply: str) -> tuple[list[int], list[int], int]:
    """Tokens of `context` + the assistant `reply`, and a mask that is 1 exactly on the reply.

    Returns (ids, mask, prompt_len): ids end with the reply's end-of-turn token; mask[i] = 1 for the
    reply's tokens including end-of-turn, 0 before; prompt_len = number of leading 0s.
    """
    prefix = render(tokenizer, context, add_generation_prompt=True)
    full = render(tokenizer, [*context, {"role": "assistant", "content": reply}], add_generation_prompt=False)
    if not full.startswith(prefix):
        raise DataError(
            "the chat template renders the conversation differently with and without the reply, so the "
            "reply's tokens cannot be located. Use a template whose generation prompt is a prefix of the "
            "rendered reply."
        )
    head = encode(tokenizer, prefix)
    tail = encode(tokenizer, full[len(prefix):])
    eot = set(end_of_turn_ids(tokenizer))
    end = next((i for i, t in enumerate(tail) if t in eot), None)
    if end is None:
        raise DataError(
            "the chat template puts no end-of-turn token after an assistant reply (looked for "
            f"{sorted(eot)}), so the model could not learn to stop. Use a chat model's tokenizer."
        )
    tail = tail[: end + 1]
    return head + tail, [0] * len(head) + [1] * len(tail), len(head)


def turn_positions(messages: list[Message], role: str) -> list[int]:
    """Indices of the messages of `role`; the t-th is turn t (0-based). System messages are not turns."""
    return [i for i, m in enumerate(messages) if m["role"] == role]
