"""sft: supervised warm start (optional round 0) on demonstrations, loss on assistant tokens only.

Consumes a demonstrations file or dataset (`prompt`/`response` columns, or a `messages` column whose every
assistant turn becomes one example with the conversation before it as context) and the base policy;
produces a model artifact like train's. Tokens and masks come from chat.tokenize_reply, so the loss
covers exactly each reply and its end-of-turn token. Same launcher, update loop and checkpoints as train.

Run alone: python -m rebelflow.stages.sft configs/demo-rebel.yaml
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

import torch

from rebelflow.config.campaign import SFTConfig
from rebelflow.losses import masked_nll
from rebelflow.ml.batching import pad_and_forward, pad_id_of, pad_right
from rebelflow.ml.chat import policy_tokenizer, tokenize_reply
from rebelflow.ml.driver import Fit, common_summary, fit_model, plan_updates, save_model_artifact
from rebelflow.ml.models import load_causal_lm
from rebelflow.stages.prompts import read_dataset, require_columns
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

# v2: DeepSpeed clips at max_grad_norm (was 1.0); v3: 16-bit weights step through fp32 master copies
NAME, VERSION, KIND = "sft", 3, "model"


class Settings(SFTConfig):
    UNHASHED: ClassVar[set[str]] = {"launcher", "data", "tracking", "checkpoint_every"}  # cannot change the weights
    tracking: dict | None = None  # tracking.run_info(...): where this stage logs its updates

    data_identity: str


def examples(settings: Settings, tokenizer) -> tuple[list[tuple[list[int], list[int]]], Counter]:
    ds = read_dataset(settings.data, settings.split, what="demonstrations")
    require_columns(ds, f"demonstrations {settings.data}", {
        "sft.prompt_column": None if settings.messages_column else settings.prompt_column,
        "sft.response_column": None if settings.messages_column else settings.response_column,
        "sft.messages_column": settings.messages_column,
    })
    out, dropped = [], Counter()
    for row in ds:
        if settings.messages_column:
            conv = row[settings.messages_column] or []
            turns = [(conv[:i], m["content"]) for i, m in enumerate(conv) if m.get("role") == "assistant" and i > 0]
        else:
            prompt, response = row[settings.prompt_column], row[settings.response_column]
            turns = [([{"role": "user", "content": prompt}], response)] if prompt and response else []
        if not turns:
            dropped["no prompt/response"] += 1
        for context, reply in turns:
            ids, mask, _ = tokenize_reply(tokenizer, context, reply)
            if len(ids) > settings.max_tokens:
                dropped["too long"] += 1
            else:
                out.append((ids, mask))
    return out, dropped


def reply_loss(model, micro: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean negative log-likelihood of the masked (assistant) tokens of a micro-batch of examples."""
    out, ids = pad_and_forward(model, (ids for ids, _ in micro), pad)
    loss = masked_nll(out.logits, ids, pad_right((mask for _, mask in micro), 0).to(ids.device))
    return loss, {"loss": loss.item(), "tokens": sum(len(ids) for ids, _ in micro)}


def run(settings: Settings, policy: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [policy])
    if store.is_complete(ref, quarantine=True):
        return ref
    path = store.model_path(policy)
    tokenizer = policy_tokenizer(path, policy)
    pad = pad_id_of(tokenizer)
    data, dropped = examples(settings, tokenizer)
    fit = Fit(section="sft", per_update_key="examples_per_update", items=data,
              per_update=settings.examples_per_update, micro_batch=settings.micro_batch,
              loss=lambda model, micro: reply_loss(model, micro, pad), hashed_settings=hashed_settings(settings))
    plan = plan_updates(fit, settings, f"usable demonstrations (dropped: {dict(dropped)})",
                        "Lower it or add demonstrations.")
    torch.manual_seed(settings.seed)
    model = load_causal_lm(path, settings.dtype, revision=policy.revision)
    trained = fit_model(model, fit, settings, plan, store.root / ".partial" / ref.id / "checkpoints")
    summary = {"examples": len(data), "dropped": dict(dropped), **common_summary(trained, ("update", "loss", "lr"))}
    save_model_artifact(trained, lambda: store.writer(ref, VERSION, hashed_settings(settings), [policy]), tokenizer,
                        summary, "The starting policy after supervised fine-tuning on demonstrations (assistant tokens only).")
    return ref


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
