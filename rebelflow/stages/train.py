"""train: one REBEL update of the policy on the round's pairs (or a baseline's: train.objective).

Consumes a logprobs artifact (pairs with π_old logprobs; for RAFT the prepare artifact) and the round's
policy; produces a model artifact (`model/`: safetensors, tokenizer and chat template; `metrics.jsonl`: one
line per update) that the next round's generate stage loads. The loss is REBEL's regression
(losses.rebel_loss) of d = (log π_θ(chosen) − log π_old(chosen)) − (log π_θ(rejected) − log π_old(rejected))
onto η·(r_chosen − r_rejected); DPO's or IPO's on the same log-ratio margin (losses.preference_loss, the
logprobs then being the reference's: the round's policy or the initial one, at temperature 1); or RAFT's
supervised loss on each pair's chosen (the prompt's best) response (losses.masked_nll). AdamW with a cosine schedule and warmup; `pairs_per_update` pairs per
optimizer step in micro-batches of `micro_batch_pairs` (gradient accumulation), each micro-batch padded
only to its own longest sequence. Validation loss and sign agreement every `eval_every` updates; a
checkpoint every `checkpoint_every` updates in the artifact's .partial folder, from which an interrupted
run continues. Launched by train.launcher: `accelerate launch` for several processes or ZeRO, the module
itself for one process (the demo on CPU).

Run alone: python -m rebelflow.stages.train configs/demo-rebel.yaml --round 1
"""

from __future__ import annotations

from typing import ClassVar

import torch

from rebelflow.config.campaign import TrainConfig
from rebelflow.ml.batching import pad_id_of, pair_loss
from rebelflow.ml.chat import policy_tokenizer
from rebelflow.ml.driver import Fit, common_summary, fit_model, plan_updates, save_model_artifact
from rebelflow.ml.models import load_causal_lm, set_trainable
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

# v2: top-k training includes the final norm and an untied LM head; v3: DeepSpeed clips at max_grad_norm (was 1.0); v4: 16-bit weights step through fp32 master copies
NAME, VERSION, KIND = "train", 4, "model"


class Settings(TrainConfig):
    UNHASHED: ClassVar[set[str]] = {"launcher", "tracking", "checkpoint_every", "eval_every"}  # cannot change the weights
    tracking: dict | None = None  # tracking.run_info(...): where this stage logs its updates

    temperature: float  # the sampling temperature, as in the logprobs stage (1 for DPO and IPO)
    attn_implementation: str

    def unhashed(self) -> set[str]:
        """Only the chosen objective's settings make the weights: REBEL's fingerprints are those it had before
        the baselines existed, and a DPO run is not redone because η changed."""
        irrelevant = {
            "rebel": {"objective", "beta", "label_smoothing", "reference"},
            "dpo": {"eta", "reference"},  # the reference is the logprobs input's policy, fingerprinted there
            "ipo": {"eta", "label_smoothing", "reference"},
            "raft": {"eta", "beta", "label_smoothing", "reference", "temperature"},
        }[self.objective]
        return self.UNHASHED | irrelevant


def run(settings: Settings, pairs: ArtifactRef, policy: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [pairs, policy])
    if store.is_complete(ref, quarantine=True):
        return ref
    fit = Fit(
        section="train", per_update_key="pairs_per_update", items=store.read_rows(pairs, "train"),
        per_update=settings.pairs_per_update, micro_batch=settings.micro_batch_pairs,
        loss=lambda model, micro: pair_loss(model, micro, settings.eta, settings.temperature, pad, settings.objective,
                                            settings.beta, settings.label_smoothing),
        validation=store.read_rows(pairs, "validation"),
        validation_keys=("loss",) if settings.objective == "raft" else ("loss", "sign_agreement"),
        eval_every=settings.eval_every, hashed_settings=hashed_settings(settings),
    )
    plan = plan_updates(fit, settings, "training pairs", "Lower train.pairs_per_update or use more prompts.")
    torch.manual_seed(settings.seed)
    path = store.model_path(policy)
    tokenizer = policy_tokenizer(path, policy)
    pad = pad_id_of(tokenizer)
    model = load_causal_lm(path, settings.dtype, settings.attn_implementation, policy.revision)
    model, trainable = set_trainable(model, settings.trainable, settings.lora)
    trained = fit_model(model, fit, settings, plan, store.root / ".partial" / ref.id / "checkpoints")
    evaluated = [h for h in trained.history if "val_loss" in h]
    summary = {
        "train pairs": len(fit.items),
        "validation pairs": len(fit.validation),
        "trainable parameters": trainable,
        "first val_loss": round(evaluated[0]["val_loss"], 5) if evaluated else None,
        "last val_loss": round(evaluated[-1]["val_loss"], 5) if evaluated else None,
        "last val_sign_agreement": round(evaluated[-1]["val_sign_agreement"], 4)
        if evaluated and "val_sign_agreement" in evaluated[-1] else None,
        **({"objective": settings.objective} if settings.objective != "rebel" else {}),
        **common_summary(trained, ("update", "loss", "sign_agreement", "reward_margin", "val_loss",
                                   "val_sign_agreement", "lr")),
    }
    lora = (path, settings.dtype, settings.lora) if settings.trainable == "lora" else None
    save_model_artifact(trained, lambda: store.writer(ref, VERSION, hashed_settings(settings), [pairs, policy]),
                        tokenizer, summary, _CARD.format(objective=_OBJECTIVES[settings.objective]), lora)
    return ref


_OBJECTIVES = {"rebel": "REBEL", "dpo": "DPO", "ipo": "IPO", "raft": "RAFT (best-response fine-tuning)"}
_CARD = "The policy after one {objective} round; metrics.jsonl has one line per optimizer update."

if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
