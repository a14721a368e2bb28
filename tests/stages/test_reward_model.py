"""Reward-model stages on tiny models: preference validation, the pad token, left truncation."""

from __future__ import annotations

import pytest

from rebelflow.config.errors import ConfigError
from rebelflow.rewards.classifier import reward_ids
from rebelflow.stages import preferences
from rebelflow.stages.rm_train import NEW_PAD, load_reward_model
from rebelflow.store.local import Store
from rebelflow.store.refs import data_identity
from tests.conftest import REPO, TINY

DATA = REPO / "configs/data"


def run_preferences(tmp_path, source, **extra):
    settings = preferences.Settings(source=str(source), data_identity=data_identity(str(source), "train"), **extra)
    store = Store(tmp_path / "store")
    return store, preferences.run(settings, store=store)


def test_preference_pairs_are_validated_with_counted_drops(tmp_path):
    store, ref = run_preferences(tmp_path, DATA / "rm-preferences.jsonl", heldout_fraction=0.25)
    summary = store.manifest(ref)["summary"]
    assert summary["dropped"] == {"roles out of order": 5, "empty content": 5, "chosen == rejected": 5,
                                  "prompt mismatch": 5}
    train, held = store.read_rows(ref, "train"), store.read_rows(ref, "heldout")
    assert (len(train), len(held)) == (585, 195) and not {r["id"] for r in train} & {r["id"] for r in held}
    multi = next(r for r in train + held if len(r["context"]) == 3)  # an earlier exchange, then the question
    assert [m["role"] for m in multi["context"]] == ["user", "assistant", "user"]
    assert multi["chosen"] != multi["rejected"]


def test_pair_rules():
    user, reply = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}
    other = {"role": "assistant", "content": "Go away"}
    assert preferences.pair_from_messages([user, reply], [user, other])[0]["chosen"] == "Hello"
    assert preferences.pair_from_messages([reply, user], [user, other]) == (None, "roles out of order")
    assert preferences.pair_from_messages([user, reply], [{"role": "user", "content": "Yo"}, other]) == (
        None, "prompt mismatch")
    assert preferences.pair_from_messages([user, reply], [user, reply]) == (None, "chosen == rejected")
    assert preferences.pair_from_messages([user, {"role": "assistant", "content": ""}], [user, other]) == (
        None, "empty content")
    system = {"role": "system", "content": "Be kind."}
    assert preferences.pair_from_messages([system, user, reply], [system, user, other])[0]["context"] == [system, user]


def test_rewardbench_format_is_recognised(tmp_path):
    store, ref = run_preferences(tmp_path, DATA / "rm-bench.jsonl", evaluation=True)
    rows = store.read_rows(ref, "test")
    assert len(rows) == 200 and {r["subset"] for r in rows} == {"cheer-easy", "cheer-hard", "length-trap", "addition"}
    assert rows[0]["context"] == [{"role": "user", "content": rows[0]["context"][0]["content"]}]


@pytest.fixture
def policy_without_pad(tmp_path):
    """A tiny causal LM whose tokenizer has no pad token (like Llama-3's)."""
    from rebelflow.ml.tiny import build_policy

    path = build_policy(tmp_path / "nopad", TINY)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = None
    tok.save_pretrained(path)
    return str(path), len(tok)


def test_a_tokenizer_without_pad_gets_a_new_token_and_bigger_embeddings(policy_without_pad):
    path, vocab = policy_without_pad
    tokenizer, model, how = load_reward_model(path, None, None, "float32")
    assert how == "added" and tokenizer.pad_token == NEW_PAD and len(tokenizer) == vocab + 1
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.num_labels == 1


def test_eos_as_pad_is_replaced_and_refused_when_configured(policy_without_pad):
    from transformers import AutoTokenizer

    path, _ = policy_without_pad
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(path)
    tokenizer, model, how = load_reward_model(path, None, None, "float32")
    assert how == "added" and model.config.pad_token_id != tokenizer.eos_token_id
    with pytest.raises(ConfigError, match="is the EOS token"):
        load_reward_model(path, None, tok.eos_token, "float32")
    with pytest.raises(ConfigError, match="not in the tokenizer's vocabulary"):
        load_reward_model(path, None, "<no-such-token>", "float32")


def test_left_truncation_keeps_the_end_of_the_conversation(tiny_policy):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_policy)
    context = [{"role": "user", "content": "Tell me about cats. " * 20}]
    full = reward_ids(tok, context, "They are warm and kind.", 10_000)
    cut = reward_ids(tok, context, "They are warm and kind.", 12)
    assert len(cut) == 12 and cut == full[-12:]
    assert tok.decode(cut).rstrip().endswith("They are warm and kind.<|im_end|>")
    assert not tok.decode(cut).startswith("<|im_start|>user")  # the beginning went, not the end
