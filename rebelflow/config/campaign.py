"""Run configuration: one pydantic model per stage plus `RunConfig` (YAML loading and `--set` overrides are
in config/loading.py).

Defaults live here and nowhere else. Every model forbids unknown keys, so a typo in YAML is an error that
names the key and the valid ones.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rebelflow.config.base import Section
from rebelflow.config.dialogue import DEFAULT_USER_TEMPLATE, DialogueConfig, OpenAIConfig, UserConfig  # noqa: F401
from rebelflow.config.engines import DTYPE, VLLMConfig
from rebelflow.config.judge import JudgeConfig
from rebelflow.config.launcher import LauncherConfig  # noqa: F401  (re-exported)
from rebelflow.config.online import OnlineConfig
from rebelflow.config.operations import HubConfig, TrackingConfig, VariantConfig, WandbConfig  # noqa: F401  (re-exported)
from rebelflow.config.training import LogprobsConfig, LoraConfig, TrainConfig  # noqa: F401  (re-exported)

# Stages of a round in order; `stop_after` may end a round early (then a campaign has one round).
ROUND_STAGES = ("prompts", "generate", "score", "prepare", "logprobs", "train", "evaluate")
LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class TinyModelConfig(Section):
    """A small random Llama and a BPE tokenizer, built offline from the corpus shipped in the package."""

    vocab_size: int = Field(1024, ge=300, le=32000)
    hidden_size: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    max_positions: int = Field(512, ge=64)
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyModelConfig:
        if self.hidden_size % self.heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads}): each head gets "
                f"an equal slice. Set heads to a divisor of {self.hidden_size}."
            )
        return self


class PolicyConfig(Section):
    model: str = Field("tiny", description='"tiny" (built offline), a local model folder or a Hub model id')
    revision: str | None = None
    tiny: TinyModelConfig = TinyModelConfig()
    chat_template: str | None = Field(
        None, description="in place of the model's own: 'plain' (the prompt's text, the reply after it, EOS: a "
                          "model without a chat format, e.g. REBEL's TL;DR policy) or a Jinja chat template")


class PromptsConfig(Section):
    source: str = Field(..., description="a local .jsonl/.json/.parquet/.csv file or a Hub dataset id")
    split: str = "train"
    revision: str | None = None
    prompt_column: str | None = "prompt"
    messages_column: str | None = None
    id_column: str | None = None
    system_prompt: str | None = None
    first_turn_only: bool = Field(False, description="messages_column: keep the system prompt and the first user turn")
    per_round: int | None = Field(None, ge=1, description="prompts each round takes (None: all)")
    selection: Literal["same", "disjoint"] = "same"
    shuffle_seed: int | None = Field(None, description="shuffle rows once before slicing (None: file order)")
    offset: int = Field(0, ge=0, description="skip this many usable rows before the first slice")

    @model_validator(mode="after")
    def _one_prompt_column(self) -> PromptsConfig:
        if (self.prompt_column is None) == (self.messages_column is None):
            raise ValueError(
                "set exactly one of prompt_column (a text column, becomes one user message) and "
                "messages_column (a column holding a list of {role, content} messages); "
                f"got prompt_column={self.prompt_column!r}, messages_column={self.messages_column!r}."
            )
        if self.selection == "disjoint" and self.per_round is None:
            raise ValueError(
                "selection 'disjoint' gives each round its own slice of per_round prompts, but per_round "
                "is not set. Set prompts.per_round, or use selection: same."
            )
        return self

    def is_local(self) -> bool:
        return self.source.endswith(LOCAL_DATA_SUFFIXES)


class GenerateConfig(Section):
    engine: Literal["hf", "vllm"] = Field("hf", description="hf: transformers (CPU or one GPU); vllm: vLLM")
    vllm: VLLMConfig = VLLMConfig()
    n: int = Field(5, ge=1, description="samples per prompt; REBEL pairs the best and the worst (needs 2+)")
    temperature: float = Field(0.8, ge=0.0, description="0 = greedy")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(2048, ge=1)
    seed: int = Field(0, description="sample j of every prompt uses seed + 50*j")
    batch_size: int = Field(8, ge=1, description="prompts per engine call")
    shard_size: int = Field(256, ge=1, description="prompts per parquet shard (the unit of resume)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    launcher: LauncherConfig = LauncherConfig()


class ValueHeadConfig(Section):
    """A reward model saved as a backbone plus a linear value head in one checkpoint, loaded from its files
    (no model class of its own in transformers): REBEL's TL;DR reward model (`lm_backbone.`, `scalar_head`,
    the backbone's config under `base_config`, a `bias` subtracted) or Starling-RM (`transformer.`,
    `v_head`, a Llama-2 config)."""

    backbone_prefix: str = Field(..., description="the checkpoint's prefix of the backbone tensors, e.g. 'lm_backbone.'")
    head: str = Field(..., description="the head's name in the checkpoint: <head>.weight (and <head>.bias if it has one)")
    config: str = Field(
        "self", description="the backbone's architecture: 'self' (the checkpoint's config.json), a key of that "
                            "config.json holding it (e.g. 'base_config'), or a model folder / Hub id whose config it is")
    bias: float | str | None = Field(None, description="subtracted from every score: a number or a config.json key")


class RewardConfig(Section):
    backend: Literal["rule", "classifier", "armorm", "value_head"] = "rule"
    function: str | None = Field(None, description="rule: module:function or path/to/file.py:function")
    model: str | None = Field(None, description="classifier/armorm: a local folder or Hub id")
    artifact: str | None = Field(
        None, description="classifier: a reward model made by `rebelflow rm-train` (its rm_train artifact id or prefix)"
    )
    revision: str | None = None
    trust_remote_code: bool = Field(False, description="run the model's own Python code (armorm needs it)")
    pad_token: str | None = Field(None, description="classifier: a vocabulary token to pad with")
    tokenizer: str | None = Field(None, description="where the tokenizer is when the model's folder has none")
    chat_template: str | None = Field(
        None, description="how (prompt, reply) becomes the reward model's text, in place of its tokenizer's "
                          "template: 'plain' (prompt text, reply, EOS) or a Jinja chat template")
    value_head: ValueHeadConfig | None = Field(None, description="value_head: how the checkpoint is laid out")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(4096, ge=8)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _backend_fields(self) -> RewardConfig:
        if self.backend == "rule" and not self.function:
            raise ValueError("backend 'rule' needs function: 'module:function' (called with messages, response).")
        if self.backend == "rule" and ":" not in self.function:
            raise ValueError(f"function {self.function!r} must look like 'module:function' or 'file.py:function'.")
        if self.backend == "value_head" and not (self.model and self.value_head):
            raise ValueError("backend 'value_head' needs model (the checkpoint's folder or Hub id) and value_head: "
                             "{backbone_prefix, head, config, bias}.")
        if self.backend in ("classifier", "armorm") and not (self.model or self.artifact):
            raise ValueError(
                f"backend '{self.backend}' needs model: a local folder or Hub id of a reward model (or, for "
                "classifier, artifact: the id of one trained with rebelflow rm-train)."
            )
        if self.artifact and self.backend != "classifier":
            raise ValueError("artifact names a reward model trained by rm-train, a classifier: set backend: classifier.")
        if self.backend == "armorm" and not (self.trust_remote_code and self.revision):
            raise ValueError(
                "backend 'armorm' loads the model's own Python code, which must be an explicit choice: set "
                "reward.trust_remote_code: true and pin reward.revision to the commit you reviewed."
            )
        return self


class ScoreConfig(Section):
    shard_size: int = Field(256, ge=1, description="prompts per parquet shard (the unit of resume)")
    max_invalid_fraction: float = Field(
        0.1, ge=0, le=1, description="stop when more rewards than this are invalid (a broken reward, not noise)"
    )
    launcher: LauncherConfig = LauncherConfig()


class PrepareConfig(Section):
    max_prompt_tokens: int = Field(1024, ge=1)
    max_response_tokens: int = Field(2048, ge=1)
    require_eot: bool = Field(False, description="drop pairs where a response hit the length limit")
    validation_pairs: int = Field(1000, ge=0, description="pairs held out for validation")
    seed: int = 0
    launcher: LauncherConfig = LauncherConfig()


class EvaluateConfig(Section):
    prompts: PromptsConfig | None = Field(None, description="held-out prompts (never used for training)")
    n: int = Field(1, ge=1, description="samples per prompt for each policy; rewards are averaged")
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(2048, ge=1)
    seed: int = 1234
    batch_size: int = Field(8, ge=1)
    launcher: LauncherConfig = LauncherConfig()
    judge: JudgeConfig | None = Field(None, description="an LLM judge of the new policy against the baseline, "
                                                        "beside the reward-model win rate (per turn for dialogues)")


class SFTConfig(Section):
    """Supervised warm start (round 0) on demonstrations; loss on assistant tokens only."""

    data: str = Field(..., description="a local .jsonl/.json/.parquet/.csv file or a Hub dataset id")
    split: str = "train"
    prompt_column: str | None = "prompt"
    response_column: str | None = "response"
    messages_column: str | None = None
    lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_grad_norm: float | None = Field(None, gt=0)
    epochs: int = Field(1, ge=1)
    examples_per_update: int = Field(32, ge=1)
    micro_batch: int = Field(8, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    max_tokens: int = Field(2048, ge=8, description="examples longer than this are dropped and counted")
    dtype: DTYPE = "float32"
    seed: int = 0
    launcher: LauncherConfig = LauncherConfig(kind="accelerate")

    @model_validator(mode="after")
    def _columns(self) -> SFTConfig:
        if self.messages_column is None and not (self.prompt_column and self.response_column):
            raise ValueError("set messages_column, or both prompt_column and response_column.")
        if self.examples_per_update % self.micro_batch:
            raise ValueError(
                f"micro_batch ({self.micro_batch}) must divide examples_per_update ({self.examples_per_update}). "
                f"Set micro_batch to a divisor of {self.examples_per_update}."
            )
        return self


# vLLM settings that change speed and memory but not outputs: left out of fingerprints.
VLLM_SPEED_ONLY = {"tensor_parallel_size": True, "gpu_memory_utilization": True, "enforce_eager": True, "kv_cache_gib": True,
                   "sleep": True}
# Where an OpenAI-compatible user is served and how it is called: the served model name is what counts.
OPENAI_TRANSPORT = {"base_url": True, "api_key_env": True, "concurrency": True, "max_retries": True, "timeout": True}


class StoreConfig(Section):
    root: str = "rebelflow-store"


class RunConfig(Section):
    campaign: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    rounds: int = Field(1, ge=1)
    stop_after: Literal["generate", "score", "prepare", "logprobs", "train", "evaluate"] = "evaluate"
    policy: PolicyConfig = PolicyConfig()
    dialogue: DialogueConfig | None = None
    online: OnlineConfig | None = Field(None, description="online rounds: iterations of sample → score → regress")
    sft: SFTConfig | None = None
    prompts: PromptsConfig
    reward: RewardConfig
    generate: GenerateConfig = GenerateConfig()
    score: ScoreConfig = ScoreConfig()
    prepare: PrepareConfig = PrepareConfig()
    logprobs: LogprobsConfig = LogprobsConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    hub: HubConfig | None = Field(None, description="upload every artifact to the Hub and fetch missing ones")
    store: StoreConfig = StoreConfig()
    variant: VariantConfig | None = Field(None, description="set by the loader from --set overrides that change results")

    @field_validator("campaign")
    @classmethod
    def _campaign_length(cls, v: str) -> str:
        if len(v) > 64:
            raise ValueError("at most 64 characters: it names folders and flow runs.")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        stages = self.stages()
        if self.generate.n < 2 or self.generate.temperature <= 0:
            raise ValueError(
                f"generate.n is {self.generate.n} and generate.temperature {self.generate.temperature}: REBEL "
                "pairs the best and the worst of n sampled responses, so it needs n >= 2 and temperature > 0 "
                "(greedy samples are identical). Set generate.n: 2 or more and a positive temperature."
            )
        if self.stop_after == "logprobs" and not self.train.needs_logprobs:
            raise ValueError("stop_after is 'logprobs', but objective raft has no logprobs stage (its supervised "
                             "loss needs no reference). Set stop_after: prepare or train.")
        if self.rounds > 1 and "train" not in stages and "online" not in stages:
            raise ValueError(
                f"rounds: {self.rounds} needs each round's trained policy, but stop_after is "
                f"'{self.stop_after}'. Set stop_after: train (or evaluate), or rounds: 1."
            )
        if "evaluate" in stages and self.evaluate.prompts is None:
            raise ValueError(
                "evaluation needs held-out prompts: set evaluate.prompts (same keys as prompts), or "
                "stop_after: train to skip evaluation."
            )
        user = self.dialogue.user if self.dialogue is not None else None
        if user is not None and user.kind == "llm" and user.engine is None:
            user.engine = self.generate.engine
        if user is not None and user.kind == "llm" and user.engine == self.generate.engine == "vllm":
            total = user.vllm.gpu_memory_utilization + self.generate.vllm.gpu_memory_utilization
            if total > 0.95:
                raise ValueError(
                    f"the policy's and the user's vLLM engines share the GPUs in one process, but their memory "
                    f"fractions add up to {total:.2f} (generate.vllm.gpu_memory_utilization "
                    f"{self.generate.vllm.gpu_memory_utilization} + dialogue.user.vllm.gpu_memory_utilization "
                    f"{user.vllm.gpu_memory_utilization}). Make them add up to 0.95 or less, or serve the user "
                    "elsewhere (dialogue.user.engine: openai)."
                )
        per_round = self.prompts.per_round
        if per_round is not None and "prepare" in stages and self.online is None and self.prepare.validation_pairs >= per_round:
            raise ValueError(
                f"prepare.validation_pairs ({self.prepare.validation_pairs}) must be below prompts.per_round "
                f"({per_round}): at most one pair per prompt, and training needs some. Lower "
                "prepare.validation_pairs or raise prompts.per_round."
            )
        return self

    @model_validator(mode="after")
    def _online(self) -> RunConfig:
        if self.online is None:
            self.train.split_over_ranks()
            return self
        ranks = self.train.launcher.processes()
        problems = [
            (self.dialogue is not None and self.online.samples_per_prompt != 2,
             "a multi-turn online round makes two dialogues per prompt (the second branched at turn h): set "
             "online.samples_per_prompt: 2"),
            (self.dialogue is not None and self.online.forced_length,
             "online.forced_length applies to single replies; multi-turn rounds cut each reply at its own "
             "end-of-turn: remove online.forced_length or the dialogue section"),
            (self.generate.engine == "vllm" and not (self.train.launcher.env or self.train.launcher.python),
             "an online round with generate.engine: vllm keeps the engine inside its training process, which must "
             "run where vLLM is installed: set train.launcher: {kind: subprocess, env: vllm} (make vllm-env)"),
            (self.generate.engine == "vllm" and self.generate.vllm.gpu_memory_utilization > 0.5,
             f"an online round's vLLM engine shares the GPU with the trainer (policy, reference, reward model, "
             f"optimizer), which are loaded first: generate.vllm.gpu_memory_utilization "
             f"{self.generate.vllm.gpu_memory_utilization} would leave them too little or fail at start-up. Set it to "
             "0.5 or less (e.g. 0.3 for an 8B policy beside an 8B reward model on 80 GB)"),
            (self.generate.engine == "vllm" and self.generate.vllm.tensor_parallel_size > 1,
             "an online round's vLLM engine runs in the training process, on its one GPU: set "
             "generate.vllm.tensor_parallel_size: 1"),
            (self.online.prompts_per_iteration % ranks != 0,
             f"online.prompts_per_iteration ({self.online.prompts_per_iteration}) cannot be shared equally over the "
             f"train launcher's {ranks} processes: each samples an equal share (so none is empty, and under ZeRO the "
             f"ranks' logprob passes stay in step). Make it a multiple of {ranks}"),
            (self.train.objective != "rebel",
             f"train.objective {self.train.objective} applies to iterative rounds (generate → … → train); an online "
             "round's update is set by online.objective (rebel or ppo): remove train.objective"),
            (self.online.objective == "ppo" and self.dialogue is not None,
             "online.objective: ppo trains single replies; multi-turn online rounds (REFUEL) are REBEL's: remove "
             "online.objective or the dialogue section"),
            (self.online.objective == "ppo" and self.online.ppo.value_init == "reward"
             and self.reward.backend not in ("classifier", "value_head"),
             f"online.ppo.value_init: reward copies the reward model into the value model, which needs a transformer "
             f"with a scalar head (reward.backend classifier or value_head), not {self.reward.backend!r}: set "
             "online.ppo.value_init: policy"),
            (self.stop_after not in ("train", "evaluate"), f"an online round trains as it samples, so stop_after "
                                                           f"'{self.stop_after}' cannot stop before it: set stop_after: train or evaluate"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(message + ".")
        return self

    @model_validator(mode="after")
    def _same_precision(self) -> RunConfig:
        if self.train.dtype != self.logprobs.dtype:
            raise ValueError(
                f"train.dtype ({self.train.dtype}) and logprobs.dtype ({self.logprobs.dtype}) differ: π_old would "
                "come from another precision than π_θ, so the log-ratio is not 0 at the first step and the "
                f"regression starts off target. Set both to {self.train.dtype} (or both to {self.logprobs.dtype})."
            )
        return self

    def stages(self) -> tuple[str, ...]:
        """The stages of a round up to stop_after; an online round is prompts → online (→ evaluate)."""
        if self.online is not None:
            return ("prompts", "online", "evaluate") if self.stop_after == "evaluate" else ("prompts", "online")
        return ROUND_STAGES[: ROUND_STAGES.index(self.stop_after) + 1]
