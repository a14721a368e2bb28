"""online: one online round (REBEL's online experiments, REFUEL setting two) as one resident stage —
`online.iterations` iterations of sample → score → KL-shaped reward → regression passes, with the policy, its reference and
the reward model loaded once (ml.online_loop). Sampling is transformers generation inside the training
process on the weights being trained, or (generate.engine: vllm) a vLLM engine in the same process that
takes the updated weights after every iteration (and sleeps between generations on a GPU). Over several
processes (train.launcher: accelerate, DDP or ZeRO) each rank samples its share of the prompts on its own
engine (transformers, or a vLLM engine per rank); the main process writes the artifact. With a dialogue section each prompt gives two dialogues branched at
a turn h (REFUEL setting two, user turns from the data): the trained reply is turn h's, the reward the
whole dialogue's. With `online.objective: ppo` the update is PPO's, with a value model beside the policy (ml.ppo);
the value model is saved in the artifact (value/) and the next PPO round starts from it.

Inputs: the round's prompts, the round's starting policy, and (from round 2 on) the campaign's starting
policy, which the KL term's reference is. The artifact is the policy after the round (model/), every
iteration's rollouts as dataset shards (prompt, reply ids and mask, score, KL, reward, end-of-turn flag),
metrics.jsonl with one row per iteration, and a summary.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import fields, replace
from typing import ClassVar

import pyarrow as pa
import torch

from rebelflow.config.base import Section
from rebelflow.config.campaign import VLLM_SPEED_ONLY, LoraConfig, RewardConfig, VLLMConfig
from rebelflow.config.errors import ConfigError, DataError
from rebelflow.config.online import OnlineConfig
from rebelflow.ml.chat import policy_tokenizer, prompt_ids, tokenize_reply, turn_positions
from rebelflow.ml.distributed import (
    finish_distributed,
    full_weights,
    make_accelerator,
    world_size,
    zero_stage,
)
from rebelflow.ml.driver import write_model
from rebelflow.ml.models import device, engine_weights, load_causal_lm, set_trainable
from rebelflow.ml.online_loop import OnlineLoop, Optimization, SingleTurn, micro_batches_per_update
from rebelflow.ml.ppo import (
    PolicyAndValue,
    PPOLoop,
    ValueModel,
    critic_from_policy,
    critic_from_reward,
    load_value_state,
    save_value_state,
    set_critic_trainable,
)
from rebelflow.ml.reference import make_reference
from rebelflow.ml.tracking import Tracker
from rebelflow.stages import generate_dialogues
from rebelflow.store.local import ArtifactWriter, Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "online", 3, "model"  # v3: over several processes; the process count in the fingerprint
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema([
    ("iteration", pa.int64()), ("prompt_index", pa.int64()), ("sample", pa.int64()),
    ("messages", pa.list_(MESSAGE)), ("ids", pa.list_(pa.int64())), ("mask", pa.list_(pa.int64())),
    ("has_end", pa.bool_()), ("response", pa.string()), ("score", pa.float64()), ("logp_old", pa.float64()),
    ("kl", pa.float64()), ("reward", pa.float64()),
    ("dialogue", pa.list_(MESSAGE)), ("branch_turn", pa.int64()), ("invalid", pa.string()),
])
# PPO's rollouts also keep, per reply token, π_old's log-probability, the value and the reward
PPO_SCHEMA = SCHEMA.append(pa.field("token_logp_old", pa.list_(pa.float64()))).append(
    pa.field("token_values", pa.list_(pa.float64()))).append(pa.field("token_rewards", pa.list_(pa.float64())))


class Settings(Section):
    # validation and checkpoints cannot change the weights
    UNHASHED: ClassVar[dict] = {
        "tracking": True, "max_invalid_fraction": True, "vllm": VLLM_SPEED_ONLY,
        "online": {"validate_every": True, "validation_prompts": True, "validation_temperature": True,
                   "checkpoint_every": True},
        "dialogue": {**generate_dialogues.Settings.UNHASHED, "shard_size": True},
    }

    online: OnlineConfig
    reward: RewardConfig
    reward_identity: str
    eta: float
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    max_grad_norm: float | None
    micro_batch_pairs: int
    warmup_ratio: float
    trainable: str | int
    lora: LoraConfig
    dtype: str
    attn_implementation: str
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int = 8  # prompts per engine call (generate.batch_size)
    engine: str = "hf"  # hf: transformers on the trained model; vllm: an engine in this process, weights pushed
    vllm: VLLMConfig = VLLMConfig()
    generate_dtype: str = "float32"  # the vLLM engine's
    total_updates: int  # the campaign's, so the schedule anneals across rounds
    first_update: int
    seed: int
    processes: int = 1  # the training launch's: each rank samples its share with its own seeds
    max_invalid_fraction: float = 0.1  # score.max_invalid_fraction: more invalid rewards stop the round
    # multi-turn rounds (REFUEL setting two): how dialogues are rolled out (seeds and temperature are the loop's)
    dialogue: generate_dialogues.Settings | None = None
    tracking: dict | None = None

    def unhashed(self) -> dict:
        """Only the objective's own settings make the weights: REBEL rounds keep the fingerprints they had
        before PPO existed, and PPO rounds ignore η and the pair minibatch."""
        online = {**self.UNHASHED["online"],
                  **({"objective": True, "ppo": True} if self.online.objective == "rebel" else {"minibatch_pairs": True})}
        return {**self.UNHASHED, "online": online, **({"eta": True} if self.online.objective == "ppo" else {})}


class Shards:
    """The rollouts of each iteration as one shard of the artifact being written."""

    def __init__(self, writer: ArtifactWriter, schema: pa.Schema = SCHEMA):
        self.w, self.schema = writer, schema

    def has(self, i: int) -> bool:
        return self.w.has_shard("train", i)

    def read(self, i: int) -> list[dict]:
        return self.w.read_shard("train", i).to_pylist()

    def write(self, i: int, rows: list[dict]) -> None:
        self.w.write_shard("train", i, rows, self.schema)


def run(settings: Settings, prompts: ArtifactRef, policy: ArtifactRef, *more: ArtifactRef, store: Store) -> ArtifactRef:
    """`more`: the campaign's starting policy (a model, from round 2 on) and the held-out prompts that
    validation samples (a prompts artifact), each when the plan has one."""
    inputs = [prompts, policy, *more]
    initial = next((r for r in more if r.stage != "prompts"), None)
    validation = next((r for r in more if r.stage == "prompts"), None)
    ref = artifact_ref(NAME, VERSION, KIND, settings, inputs)
    if store.is_complete(ref, quarantine=True):
        return ref
    conversations = store.read_rows(prompts)
    if not conversations:
        raise DataError("the round has no prompts. Check prompts.source and prompts.per_round.")
    held_out = store.read_rows(validation) if validation is not None else []
    if world_size() != settings.processes:
        raise ConfigError(
            f"this online round was planned for {settings.processes} training process(es) (train.launcher) but "
            f"was launched with {world_size()}: each rank samples its share with its own seeds, so the process "
            "count is part of the round's fingerprint. Plan and launch it with the same train.launcher."
        )
    loop, tokenizer, path, engine = _loop(settings, store, policy, initial, conversations, held_out)
    main = loop.accelerator.is_main_process
    tracker = Tracker(settings.tracking if main else None, hashed_settings(settings))
    # the main process writes the artifact (shards as the round goes); every process checkpoints beside it
    with store.writer(ref, VERSION, hashed_settings(settings), inputs) if main else nullcontext() as w:
        checkpoints = store.root / ".partial" / ref.id / "checkpoints"
        schema = PPO_SCHEMA if settings.online.objective == "ppo" else SCHEMA
        history = loop.run(checkpoints, Shards(w, schema) if main else None, say=lambda line: print(line, flush=True))
        weights = loop.accelerator.get_state_dict(loop.model)  # collective: ZeRO-3 gathers the 16-bit weights
        if main and settings.online.objective == "ppo":  # the policy's weights, the value model's beside them
            parts = {part: {k[len(part) + 1:]: v for k, v in weights.items() if k.startswith(part + ".")}
                     for part in ("policy", "critic")}
            weights = parts["policy"]
            save_value_state(parts["critic"], w.tmp)
        if main:
            for row in history:
                tracker.log(row, step=int(row["iteration"]))
            lora = (path, settings.dtype, settings.lora) if settings.trainable == "lora" else None
            summary = {"objective": settings.online.objective, **_summary(history), "processes": loop.ranks,
                       "deepspeed ZeRO stage": zero_stage(loop.accelerator)}
            write_model(w, loop.accelerator, loop.policy(), weights, tokenizer, history, summary, _CARD, lora)
            tracker.finish(summary)
    if hasattr(engine, "close"):  # a vLLM engine in this process: before the process group ends
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # vLLM's shutdown also ends the launch's process group
        engine.close()
    finish_distributed()
    return ref


def _loop(settings: Settings, store: Store, policy: ArtifactRef, initial: ArtifactRef | None,
          conversations: list, held_out: list):
    from rebelflow.engines.base import SamplingParams
    from rebelflow.rewards import load_reward

    torch.manual_seed(settings.seed)
    path = store.model_path(policy)
    tokenizer = policy_tokenizer(path, policy)
    model = load_causal_lm(path, settings.dtype, settings.attn_implementation, policy.revision)
    model, _ = set_trainable(model, settings.trainable, settings.lora)
    start = None if initial is None else load_causal_lm(store.model_path(initial), settings.dtype,
                                                        settings.attn_implementation, initial.revision)
    # on the GPU before the reference copies its layers and the engine binds the model; the starting model
    # only as far as the reference keeps it (top k: its top layers are copied, the rest is let go)
    model = model.to(device())
    keep_start = start is not None and settings.trainable in ("all", "lora")
    reference = make_reference(model, settings.trainable, start.to(device()) if keep_start else start)
    del start
    reward = load_reward(settings.reward)
    critic = _critic(settings, store, policy, reward, tokenizer) if settings.online.objective == "ppo" else None
    # after loading every model (under ZeRO-3 an accelerator would have them load partitioned, and the
    # reference would copy empty layers), before any vLLM engine: over several processes it makes the process
    # group each rank's engine joins
    micros = micro_batches_per_update(settings.online.minibatch(), settings.micro_batch_pairs, world_size())
    accelerator = make_accelerator(micros, settings.micro_batch_pairs, settings.max_grad_norm)
    engine = _engine(settings, path, policy, model, tokenizer)

    def sample(convs, n, seed, temperature):
        """`generate.batch_size` prompts per engine call: an iteration's whole batch at once (512 TL;DR posts ×
        2 samples) would hold the KV cache of all of them. Each call its own seeds (transformers seeds a
        call, not a prompt: chunks with one seed would draw the same random numbers)."""
        params = SamplingParams(n, temperature, settings.top_p, settings.max_new_tokens, seed,
                                ignore_end_of_turn=settings.online.forced_length)
        size = settings.batch_size
        return [[c.token_ids for c in row] for k, start in enumerate(range(0, len(convs), size))
                for row in engine.generate(convs[start:start + size], replace(params, seed=seed + 1009 * k))]

    def score(items):
        return [r.value for r in reward.score(items)]

    if settings.dialogue is None:
        rollouts = SingleTurn(sample, tokenizer, engine.eot, settings.online.samples_per_prompt)
    else:
        from rebelflow.users import load_user

        rollouts = Dialogues(settings.dialogue, engine, load_user(settings.dialogue.user), tokenizer)
    opt = Optimization(**{f.name: getattr(settings, f.name) for f in fields(Optimization)})
    trained, kind = (model, OnlineLoop) if critic is None else (PolicyAndValue(model, critic), PPOLoop)
    loop = kind(settings.online, opt, accelerator, trained, tokenizer, reference, rollouts, score,
                conversations, held_out, settings.max_invalid_fraction, gather_to_sample=settings.engine == "hf")
    if settings.engine == "vllm":
        def push() -> None:
            unwrapped = loop.policy()
            pushed = None if settings.trainable in ("all", "lora") else [p for p in unwrapped.parameters() if p.requires_grad]
            with full_weights(accelerator, unwrapped, pushed):  # ZeRO-3: what is pushed, gathered on each rank
                engine.push(engine_weights(unwrapped, settings.trainable))

        loop.after_update, loop.after_sampling = push, engine.rest
    return loop, tokenizer, path, engine


def _critic(settings: Settings, store: Store, policy: ArtifactRef, reward, tokenizer) -> ValueModel:
    """PPO's value model, on this process's device: the one the previous PPO round saved in its artifact
    (the round's input policy, from the store), else a new one from the policy's checkpoint or the reward
    model (online.ppo.value_init)."""
    if settings.online.ppo.value_init == "reward":
        critic = critic_from_reward(reward, tokenizer, settings.dtype)
    else:
        critic = critic_from_policy(load_causal_lm(store.model_path(policy), settings.dtype, settings.attn_implementation,
                                                   policy.revision), settings.dtype)
    critic = set_critic_trainable(critic, settings.trainable, settings.lora)
    if not policy.external and load_value_state(critic, store.path(policy)):
        print(f"the value model continues from the previous round's ({policy.id[:12]})", flush=True)
    return critic.to(device())


def _engine(settings: Settings, path, policy: ArtifactRef, model, tokenizer):
    """transformers generation on the model being trained, or (generate.engine: vllm) a colocated vLLM engine
    in this process (one per training process), which takes the trained weights after every update."""
    if settings.engine == "vllm":
        from rebelflow.engines.vllm import VLLMEngine

        return VLLMEngine(path, settings.generate_dtype, policy.revision, settings.vllm, in_process=True,
                          chat_template=policy.chat_template)
    from rebelflow.engines.hf import HFEngine

    return HFEngine.resident(model, tokenizer)


class Dialogues:
    """REFUEL setting two's rollouts with the existing multi-turn pieces (generate_dialogues.rollout): per
    prompt, dialogue 1 to its end and dialogue 2 branched at turn h (drawn per prompt and iteration); the
    trained reply is turn h, its KL and no-end-of-turn penalty are turn h's, and the reward scores the
    dialogue through its reply at turn L (its last with `dialogue.horizon: last`, as setting two does)."""

    samples = 2

    def __init__(self, settings: generate_dialogues.Settings, engine, user, tokenizer):
        self.s, self.engine, self.user, self.tokenizer = settings, engine, user, tokenizer

    def collect(self, prompts: list[dict], seed: int, temperature: float, validation: bool) -> list[dict]:
        s = self.s.model_copy(update={"seed": seed, "temperature": temperature, "dialogue_seed": seed,
                                      "branching": not validation, "user": self.s.user.model_copy(update={"seed": seed})})
        rows = []
        for p, d in enumerate(generate_dialogues.rollout(s, prompts, self.engine, self.user)):
            made = [(d["rollout1"], d["finish1"])] + ([] if validation else [(d["rollout2"], d["finish2"])])
            for j, (messages, finish) in enumerate(made):
                row = self._row(d, messages, finish, validation)
                rows.append({"prompt": p, "sample": j, **row})
        return rows

    def _row(self, d: dict, messages: list[dict], finish: list[str], validation: bool) -> dict:
        replies = turn_positions(messages, "assistant")
        h, last = d["branch_turn"], d["horizon"]
        if validation:  # the whole dialogue; "ended" when every reply did
            h = last = len(replies) - 1
        if d["invalid_reason"] or len(replies) <= max(h, last):  # a user turn failed: nothing to train or score
            context, ids = d["messages"], prompt_ids(self.tokenizer, d["messages"])
            return {"messages": context, "ids": ids, "mask": [0] * len(ids), "has_end": False, "response": "",
                    "dialogue": messages, "branch_turn": h,
                    "invalid": d["invalid_reason"] or f"the dialogue has no reply at turn {max(h, last)}"}
        context, reply = messages[: replies[h]], messages[replies[h]]["content"]
        ids, mask, _ = tokenize_reply(self.tokenizer, context, reply)
        ended = all(f == "stop" for f in finish) if validation else finish[h] == "stop"
        return {"messages": context, "ids": ids, "mask": mask, "has_end": ended, "response": reply,
                "dialogue": messages[: replies[last] + 1], "branch_turn": h, "invalid": None}


def _summary(history: list[dict]) -> dict:
    from rebelflow.ml.driver import curve

    first, last = history[0], history[-1]
    validated = [h for h in history if "val_score" in h]
    return {
        "iterations": len(history),
        "updates": sum(h["updates"] for h in history),
        "first score": round(first["score"], 5),
        "last score": round(last["score"], 5),
        "last kl": round(last["kl"], 5),
        "last penalty rate": round(last["penalty_rate"], 5),
        **({"first value loss": round(first["value_loss"], 5), "last value loss": round(last["value_loss"], 5)}
           if "value_loss" in last else {}),
        "first val_score": round(validated[0]["val_score"], 5) if validated else None,
        "last val_score": round(validated[-1]["val_score"], 5) if validated else None,
        "curve": curve(history, ("iteration", "score", "reward", "kl", "penalty_rate", "loss", "value_loss", "val_score",
                                 "lr")),
    }


_CARD = ("The policy after one online round; data/ holds every iteration's rollouts (reply ids, score, KL, "
         "shaped reward), metrics.jsonl one line per iteration.")

if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
