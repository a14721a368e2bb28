"""The trainer's sections of a campaign: the round's starting-policy logprobs, LoRA and `train` (REBEL/REFUEL
and the baselines on the same pairs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rebelflow.config.base import Section
from rebelflow.config.engines import DTYPE
from rebelflow.config.launcher import LauncherConfig


class LogprobsConfig(Section):
    batch_pairs: int = Field(16, ge=1, description="pairs per forward batch (sorted by length, padded per batch)")
    dtype: DTYPE = "float32"
    attn_implementation: Literal["eager", "sdpa"] = "sdpa"
    launcher: LauncherConfig = LauncherConfig()


class LoraConfig(Section):
    """LoRA adapters (peft) for train.trainable: lora; merged into the weights when the model is saved."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(Section):
    objective: Literal["rebel", "dpo", "ipo", "raft"] = Field(
        "rebel", description="rebel (REBEL/REFUEL's regression), dpo or ipo against `reference`, or raft (supervised "
                             "loss on each prompt's best response); the same pairs for all, so only train differs")
    eta: float = Field(1000.0, gt=0, description="REBEL's η: the regression target is η × reward difference")
    beta: float = Field(0.1, gt=0, description="DPO/IPO's β: DPO's implicit reward is β × log-ratio; IPO's margin target 1/(2β)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="DPO only: the conservative DPO's label-flip rate")
    reference: Literal["round", "initial"] = Field(
        "round", description="DPO/IPO's reference: the round's starting policy (iterative DPO) or the initial policy")
    lr: float = Field(3e-7, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(1, ge=1)
    pairs_per_update: int = Field(128, ge=1)
    micro_batch_pairs: int = Field(8, ge=1)
    max_grad_norm: float | None = Field(None, gt=0)
    eval_every: int = Field(10, ge=1, description="validation loss and sign agreement every N updates")
    checkpoint_every: int = Field(20, ge=1, description="a resumable checkpoint every N updates")
    trainable: Literal["all", "lora"] | int = Field(
        "all", description='"all", k (only the top k decoder layers) or "lora" (adapters, merged on save)'
    )
    lora: LoraConfig = LoraConfig()
    dtype: DTYPE = "float32"
    seed: int = 0
    launcher: LauncherConfig = LauncherConfig(kind="accelerate")

    @model_validator(mode="after")
    def _micro_batches(self) -> TrainConfig:
        if self.pairs_per_update % self.micro_batch_pairs:
            raise ValueError(
                f"micro_batch_pairs ({self.micro_batch_pairs}) must divide pairs_per_update "
                f"({self.pairs_per_update}): a pair must stay in one micro-batch. Set micro_batch_pairs to a "
                f"divisor of {self.pairs_per_update}."
            )
        if isinstance(self.trainable, int) and self.trainable < 1:
            raise ValueError(f"trainable ({self.trainable}) must be 'all', 'lora' or a number of top layers >= 1.")
        if self.label_smoothing and self.objective != "dpo":
            raise ValueError(f"label_smoothing ({self.label_smoothing}) applies to objective: dpo only, not "
                             f"{self.objective}. Remove train.label_smoothing or set train.objective: dpo.")
        if self.reference != "round" and self.objective not in ("dpo", "ipo"):
            raise ValueError(f"reference ({self.reference}) is DPO's and IPO's reference policy; objective "
                             f"{self.objective} has none. Remove train.reference or set train.objective: dpo or ipo.")
        return self

    @property
    def needs_logprobs(self) -> bool:
        """Whether training reads reference logprobs (the logprobs stage): all objectives but RAFT's supervised loss."""
        return self.objective != "raft"

    def split_over_ranks(self) -> None:
        """An iterative round's update is shared out in equal micro-batches (online rounds split minibatch_pairs)."""
        ranks = self.launcher.processes()
        if self.pairs_per_update % (ranks * self.micro_batch_pairs):
            raise ValueError(
                f"train.pairs_per_update ({self.pairs_per_update}) must split into equal micro-batches of "
                f"micro_batch_pairs ({self.micro_batch_pairs}) over the launcher's {ranks} processes. Make it a "
                f"multiple of {ranks * self.micro_batch_pairs}."
            )
