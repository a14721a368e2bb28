"""rm_train: a Bradley-Terry reward model trained on preference pairs.

Consumes a preferences artifact (train and held-out splits) and a starting model (a causal LM such as an
instruct model, whose head is replaced, or a sequence classifier); produces a model artifact: an HF
sequence classifier with one label and its tokenizer, which the `classifier` reward backend loads (a
campaign names it with reward.artifact). Each text is the chat-templated conversation ending in the reply,
without a second BOS, truncated from the left at max_length. The pad token is a real token: the tokenizer's
own, train.pad_token, or a new [PAD] (embeddings resized) — never EOS, with which the classifier reads the
wrong position and chosen and rejected score alike. Loss -log σ(r_chosen − r_rejected), AdamW, cosine
schedule with warmup, held-out loss and accuracy every eval_every updates; same launcher, DeepSpeed
options, checkpoints and resume as train.

Run alone: python -m rebelflow.stages.rm_train configs/demo-rm.yaml
"""

from __future__ import annotations

from typing import ClassVar

import torch

from rebelflow.config.errors import ConfigError
from rebelflow.config.reward_model import RMTrainConfig
from rebelflow.losses import bradley_terry_loss
from rebelflow.ml.batching import pad_and_forward
from rebelflow.ml.driver import Fit, common_summary, fit_model, plan_updates, save_model_artifact
from rebelflow.ml.models import DTYPES
from rebelflow.rewards.classifier import reward_ids
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

# v2: DeepSpeed clips at max_grad_norm (was 1.0); v3: 16-bit weights step through fp32 master copies
NAME, VERSION, KIND = "rm_train", 3, "model"
NEW_PAD = "[PAD]"


class Settings(RMTrainConfig):
    UNHASHED: ClassVar[set[str]] = {"launcher", "tracking", "checkpoint_every", "eval_every"}  # cannot change the weights
    tracking: dict | None = None  # tracking.run_info(...): where this stage logs its updates


def ensure_pad(tokenizer, pad_token: str | None) -> str:
    """Give the tokenizer a real pad token; returns how ('own', 'configured' or 'added')."""
    if pad_token is not None:
        if pad_token not in tokenizer.get_vocab():
            raise ConfigError(f"[train.pad_token] {pad_token!r} is not in the tokenizer's vocabulary.")
        if tokenizer.convert_tokens_to_ids(pad_token) == tokenizer.eos_token_id:
            raise ConfigError(f"[train.pad_token] {pad_token!r} is the EOS token; choose another (or unset it).")
        tokenizer.pad_token = pad_token
        return "configured"
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return "own"
    tokenizer.add_special_tokens({"pad_token": NEW_PAD})
    return "added"


def load_reward_model(path: str, revision: str | None, pad_token: str | None, dtype: str):
    """(tokenizer, sequence classifier with one label, how the pad token was set), pad token in the model
    config and the embeddings grown when a token was added."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    how = ensure_pad(tokenizer, pad_token)
    model = AutoModelForSequenceClassification.from_pretrained(path, revision=revision, num_labels=1,
                                                               dtype=DTYPES[dtype])
    if how == "added":
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model, how


def encode_pairs(tokenizer, rows: list[dict], max_length: int) -> list[tuple[list[int], list[int]]]:
    return [(reward_ids(tokenizer, r["context"], r["chosen"], max_length),
             reward_ids(tokenizer, r["context"], r["rejected"], max_length)) for r in rows]


def rewards_of(model, seqs: list[list[int]], pad: int) -> torch.Tensor:
    """(B,) the classifier's logit for each right-padded sequence."""
    return pad_and_forward(model, seqs, pad)[0].logits[:, 0]


def pair_loss(model, micro: list[tuple[list[int], list[int]]], pad: int):
    chosen = rewards_of(model, [c for c, _ in micro], pad)
    rejected = rewards_of(model, [r for _, r in micro], pad)
    loss, metrics = bradley_terry_loss(chosen, rejected)
    metrics["tokens"] = sum(len(c) + len(r) for c, r in micro)
    return loss, metrics


def run(settings: Settings, pairs: ArtifactRef, base: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [pairs, base])
    if store.is_complete(ref, quarantine=True):
        return ref
    torch.manual_seed(settings.seed)  # the new score head's initial weights
    tokenizer, model, how = load_reward_model(store.model_path(base), base.revision, settings.pad_token, settings.dtype)
    held = store.read_rows(pairs, "heldout") if "heldout" in store.manifest(pairs)["splits"] else []
    pad = tokenizer.pad_token_id
    fit = Fit(
        section="train", per_update_key="pairs_per_update",
        items=encode_pairs(tokenizer, store.read_rows(pairs, "train"), settings.max_length),
        per_update=settings.pairs_per_update, micro_batch=settings.micro_batch_pairs,
        loss=lambda model, micro: pair_loss(model, micro, pad),
        validation=encode_pairs(tokenizer, held, settings.max_length), validation_keys=("loss", "accuracy"),
        validation_prefix="heldout_", eval_every=settings.eval_every, validate_before=True,
        hashed_settings=hashed_settings(settings),
    )
    plan = plan_updates(fit, settings, "training pairs", "Lower train.pairs_per_update or add pairs.")
    trained = fit_model(model, fit, settings, plan, store.root / ".partial" / ref.id / "checkpoints")
    evaluated = [h for h in trained.history if "heldout_accuracy" in h]
    summary = {
        "train pairs": len(fit.items),
        "heldout pairs": len(fit.validation),
        "last train accuracy": round(trained.history[-1]["accuracy"], 4),
        "heldout accuracy": round(evaluated[-1]["heldout_accuracy"], 4) if evaluated else None,
        "heldout accuracy before training": round(trained.before["heldout_accuracy"], 4) if trained.before else None,
        "pad token": f"{tokenizer.pad_token} ({how})",
        **common_summary(trained, ("update", "loss", "accuracy", "heldout_loss", "heldout_accuracy", "lr")),
    }
    save_model_artifact(trained, lambda: store.writer(ref, VERSION, hashed_settings(settings), [pairs, base]),
                        tokenizer, summary, _CARD)
    return ref


_CARD = ("A Bradley-Terry reward model (sequence classifier, one label: the reward is its logit); "
         "metrics.jsonl has one line per optimizer update.")

if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
