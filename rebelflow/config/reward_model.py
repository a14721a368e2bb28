"""Reward-model configuration: what `rebelflow rm-train` and `rebelflow rm-eval` read (a YAML file of its
own, loaded by config.loading.load_config(..., root=RMConfig)). Defaults follow the RLHF-Reward-Modeling recipe:
lr 2e-6, 512 pairs per update, cosine schedule with 3 % warmup, one epoch, max_length 4096.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rebelflow.config.campaign import (
    DTYPE,
    LauncherConfig,
    RewardConfig,
    Section,
    StoreConfig,
    TinyModelConfig,
    TrackingConfig,
)


class PreferenceDataConfig(Section):
    """Preference pairs. Two formats: `messages` (chosen and rejected are full message lists that share
    everything but the last assistant reply) and `rewardbench` (prompt, chosen and rejected are texts, with
    a subset name); `auto` tells them apart by the chosen column's type."""

    source: str = Field(..., description="a local .jsonl/.json/.parquet/.csv file or a Hub dataset id")
    split: str = "train"
    revision: str | None = None
    format: Literal["auto", "messages", "rewardbench"] = "auto"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    prompt_column: str = Field("prompt", description="rewardbench format: the prompt text")
    subset_column: str | None = Field("subset", description="the subset name per row (absent: 'all')")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="rm-train: share of pairs held out for accuracy")
    limit: int | None = Field(None, ge=1, description="use only the first N usable pairs")
    seed: int = Field(0, description="shuffles the pairs before the held-out split")


class RMTrainConfig(Section):
    lr: float = Field(2e-6, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    epochs: int = Field(1, ge=1)
    pairs_per_update: int = Field(512, ge=1, description="the global batch: pairs per optimizer update")
    micro_batch_pairs: int = Field(4, ge=1, description="pairs per forward pass (chosen and rejected together)")
    max_length: int = Field(4096, ge=8, description="tokens per text; longer ones lose their beginning")
    pad_token: str | None = Field(
        None, description="a vocabulary token to pad with; None: the tokenizer's pad, or a new [PAD] token"
    )
    max_grad_norm: float | None = Field(None, gt=0)
    eval_every: int = Field(10, ge=1, description="held-out accuracy every N updates (the accuracy curve)")
    checkpoint_every: int = Field(50, ge=1)
    dtype: DTYPE = "float32"
    seed: int = 0
    launcher: LauncherConfig = LauncherConfig(kind="accelerate")

    @model_validator(mode="after")
    def _micro_batches(self) -> RMTrainConfig:
        if self.pairs_per_update % self.micro_batch_pairs:
            raise ValueError(
                f"micro_batch_pairs ({self.micro_batch_pairs}) must divide pairs_per_update "
                f"({self.pairs_per_update}). Set micro_batch_pairs to a divisor of {self.pairs_per_update}."
            )
        return self


class RMEvalConfig(Section):
    data: PreferenceDataConfig | None = Field(
        None, description="a RewardBench-format set (prompt, chosen, rejected, subset) scored after training"
    )
    weights: str = Field("leaderboard", description="leaderboard, corrected, or a YAML file of section weights")
    reward: RewardConfig | None = Field(
        None, description="rm-eval of an existing reward model (any backend) instead of the one rm-train makes"
    )
    batch_size: int = Field(8, ge=1, description="texts per forward pass (length-sorted)")
    launcher: LauncherConfig = LauncherConfig()


class RMConfig(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="names the run's folder and flow run")
    model: str = Field("tiny", description='rm-train\'s starting model: "tiny", a local folder or a Hub id')
    revision: str | None = None
    tiny: TinyModelConfig = TinyModelConfig()
    data: PreferenceDataConfig | None = Field(None, description="preference pairs to train on (rm-train)")
    train: RMTrainConfig = RMTrainConfig()
    eval: RMEvalConfig = RMEvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    store: StoreConfig = StoreConfig()

    @field_validator("name")
    @classmethod
    def _name_length(cls, v: str) -> str:
        if len(v) > 64:
            raise ValueError("at most 64 characters: it names folders and flow runs.")
        return v

    @model_validator(mode="after")
    def _something_to_do(self) -> RMConfig:
        if self.data is None and self.eval.data is None:
            raise ValueError(
                "nothing to do: set data (preference pairs for rm-train) and/or eval.data (a RewardBench-format "
                "set for rm-eval)."
            )
        if self.data is None and self.eval.reward is None:
            raise ValueError(
                "rm-eval without training data evaluates eval.reward (a reward model): set eval.reward, e.g. "
                "{backend: classifier, model: sfairXC/FsfairX-LLaMA3-RM-v0.1}, or set data to train one."
            )
        return self
