"""PPO in the online loop (`online.objective: ppo`; REFERENCE: "PPO baseline (TL;DR)"): the REBEL seed's
baseline on the same prompts, reward and sampling, so that only the update differs.

- A value model beside the policy: a backbone and a scalar head read at every position, started from the
  policy's backbone with a new head (`value_init: policy`) or from the reward model (`value_init: reward`,
  as the seed does; the reward must share the policy's vocabulary). It trains as the policy does (all
  parameters, the top k layers, or LoRA adapters, its head always).
- Policy and value model are one module (`PolicyAndValue`) for accelerate/DeepSpeed, with one optimizer;
  the loss is the clipped policy loss plus vf_coef × the clipped value loss (`losses.ppo_loss`).
- At rollout, per reply token: π_old's log-probability, the value, and the reward −kl_coef·(log π_old −
  log π_ref) with the score (penalised and scaled as REBEL's is) at the last token; they are kept in the
  iteration's shard, so a resumed round reads them back. Before the passes: rewards whitened over the
  batch (scale only), GAE (γ, λ), returns = advantages + values, advantages whitened (`ml.online`).
- Differences from the seed's script, on purpose: replies are cut after their end-of-turn and the losses
  average over each reply's tokens, then over the replies (the script generates a fixed 53 tokens and also
  averages over the positions after the end-of-text, which its truncation discards), so a batch's loss does
  not depend on its micro-batches; the value head trains also under LoRA (the script's peft wrapper leaves
  its scalar head frozen); the learning rate anneals per optimizer update, as REBEL's does (the script's
  once per iteration).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from rebelflow.config.errors import ConfigError
from rebelflow.losses import ppo_loss, token_logps
from rebelflow.ml.batching import laid_out, pad_right, per_token, right_padded, split
from rebelflow.ml.models import DTYPES, peft_config
from rebelflow.ml.online import ppo_targets, shaped_rewards, token_rewards
from rebelflow.ml.online_loop import OnlineLoop

METRICS = ("loss", "policy_loss", "value_loss", "clip_fraction", "value_clip_fraction", "approx_kl", "ratio")
VALUE_FILE = "value/model.safetensors"  # in an online artifact: the value model the next PPO round starts from
FINAL_NORMS = ("norm", "final_layer_norm", "ln_f")


class ValueModel(torch.nn.Module):
    """A transformer backbone (no LM head) and a linear head giving one value per position, minus a constant
    offset (a reward model's stored bias)."""

    def __init__(self, backbone, head: torch.nn.Linear, offset: float = 0.0):
        super().__init__()
        if head.out_features != 1:
            raise ConfigError(f"[online.ppo.value_init] the reward model's head has {head.out_features} outputs; a "
                              "value model needs one. Use value_init: policy.")
        self.backbone, self.head, self.offset = backbone, head, offset

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden).squeeze(-1).float() - self.offset


class PolicyAndValue(torch.nn.Module):
    """Policy and value model as one module, so one accelerate/DeepSpeed preparation and one optimizer hold
    both and a forward through the prepared module (DDP, ZeRO) reaches both."""

    def __init__(self, policy, critic: ValueModel):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return (self.policy(input_ids=input_ids, attention_mask=attention_mask),
                self.critic(input_ids=input_ids, attention_mask=attention_mask))


def new_head(hidden: int, dtype) -> torch.nn.Linear:
    """A scalar head as the seed initialises it: normal weights with std 1/√(hidden + 1), zero bias."""
    head = torch.nn.Linear(hidden, 1, dtype=dtype)
    torch.nn.init.normal_(head.weight, std=1 / math.sqrt(hidden + 1))
    torch.nn.init.zeros_(head.bias)
    return head


def critic_from_policy(lm, dtype: str) -> ValueModel:
    """The policy checkpoint's backbone (a fresh load, not the trained policy's modules) with a new head."""
    return ValueModel(lm.base_model, new_head(lm.config.hidden_size, DTYPES[dtype]))


def critic_from_reward(reward, policy_tokenizer, dtype: str) -> ValueModel:
    """A copy of a reward model's backbone and head (the backends with `value_parts()`: classifier and
    value_head), in the trainer's dtype. The value model reads the policy's token ids, so the two
    vocabularies must agree."""
    parts = getattr(reward, "value_parts", None)
    if parts is None:
        raise ConfigError("[online.ppo.value_init] reward starts the value model only for reward.backend classifier "
                          "or value_head (a transformer with a scalar head); use value_init: policy.")
    backbone, head, offset = parts()
    check_vocabulary(policy_tokenizer, reward.tokenizer, backbone.get_input_embeddings().num_embeddings)
    return ValueModel(copy.deepcopy(backbone).to(DTYPES[dtype]), copy.deepcopy(head).to(DTYPES[dtype]), offset)


def check_vocabulary(policy_tokenizer, reward_tokenizer, rows: int) -> None:
    """Every policy token the reward vocabulary also has must have the same id there, and every policy id
    must have an embedding row."""
    theirs = reward_tokenizer.get_vocab()
    differ = [(t, i, theirs[t]) for t, i in policy_tokenizer.get_vocab().items() if t in theirs and theirs[t] != i]
    largest = max(policy_tokenizer.get_vocab().values())
    if differ or largest >= rows:
        example = (f"token {differ[0][0]!r} is {differ[0][1]} for the policy and {differ[0][2]} for the reward model"
                   if differ else f"the policy's id {largest} has no embedding among the reward model's {rows}")
        raise ConfigError(f"[online.ppo.value_init] the value model would read the policy's token ids with the reward "
                          f"model's embeddings, but the vocabularies differ ({example}). Use value_init: policy.")


def set_critic_trainable(critic: ValueModel, trainable: str | int, lora=None) -> ValueModel:
    """Train the value model as the policy trains: every parameter, the backbone's top k layers and final
    norm, or LoRA adapters on the backbone; the head always."""
    if trainable == "lora":
        from peft import get_peft_model

        critic.backbone = get_peft_model(critic.backbone, peft_config(lora, task_type=None))
    else:
        for p in critic.backbone.parameters():
            p.requires_grad_(trainable == "all")
        if trainable != "all":
            layers = critic.backbone.layers
            if trainable > len(layers):
                raise ConfigError(f"[train.trainable] {trainable} top layers asked, the value model has {len(layers)}.")
            norm = next((getattr(critic.backbone, n) for n in FINAL_NORMS if hasattr(critic.backbone, n)), None)
            for module in [*layers[-trainable:], *([norm] if norm is not None else [])]:
                for p in module.parameters():
                    p.requires_grad_(True)
    for p in critic.head.parameters():
        p.requires_grad_(True)
    return critic


def load_value_state(critic: ValueModel, artifact_dir: Path) -> bool:
    """Start from the value model an earlier PPO round saved in its artifact, when there is one."""
    path = artifact_dir / VALUE_FILE
    if not path.is_file():
        return False
    from safetensors.torch import load_file

    try:
        critic.load_state_dict(load_file(path))
    except RuntimeError as exc:  # missing/unexpected keys or shapes
        raise ConfigError(
            f"the previous round's value model ({path}) does not fit this round's: it was trained with another "
            f"train.trainable, LoRA setting or model ({str(exc).splitlines()[0]}). Keep the campaign's settings "
            "from round to round, or start a new campaign.") from None
    return True


def save_value_state(state: dict[str, torch.Tensor], folder: Path) -> None:
    from safetensors.torch import save_file

    path = folder / VALUE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))


class PPOLoop(OnlineLoop):
    """The online loop with PPO's rollout bookkeeping and passes; `model` is a PolicyAndValue."""

    def policy(self):
        return self.accelerator.unwrap_model(self.model).policy

    def _rewarded(self, rows: list[dict], batch: list[int], iteration: int, unwrapped) -> list[dict]:
        """Scores; per reply token π_old's and the reference's log-probabilities, the value and the reward."""
        for r in rows:
            r.update(iteration=iteration + 1, prompt_index=batch[r.pop("prompt")])
        scores = self._scores(rows)
        old, ref, values = [], [], []
        for chunk in split(rows, self.opt.micro_batch_pairs):
            ids, masks = [r["ids"] for r in chunk], [r["mask"] for r in chunk]
            input_ids, attention = right_padded(ids, self.pad, next(unwrapped.parameters()).device)
            out, value = unwrapped(input_ids=input_ids, attention_mask=attention)
            old += per_token(token_logps(out.logits, input_ids, self.opt.temperature), masks)
            values += per_token(value[:, :-1], masks)
            ref += self.reference.token_logps(ids, masks, self.opt.temperature, self.pad)
        has_end = torch.tensor([r["has_end"] for r in rows])
        terminal = shaped_rewards(torch.tensor(scores), torch.zeros(len(rows)), has_end, 0.0,
                                  self.cfg.penalty_reward_value, self.cfg.reward_scale).tolist()
        for r, s, t, o, f, v in zip(rows, scores, terminal, old, ref, values, strict=True):
            kl = (o - f).float().cpu()
            rewards = token_rewards(kl, t, self.kl_coef()) if len(kl) else kl
            r.update(score=s, logp_old=o.sum().item(), kl=kl.sum().item(), reward=rewards.sum().item(),
                     token_logp_old=o.float().cpu().tolist(), token_values=v.float().cpu().tolist(),
                     token_rewards=rewards.tolist())
        return rows

    def regress(self, rows: list[dict], iteration: int) -> dict[str, float]:
        """Advantages and returns of the iteration's valid replies, then `epochs_per_iteration` PPO passes."""
        rows = [r for r in rows if r["score"] == r["score"] and r["token_rewards"]]  # NaN scores, empty replies out
        if not rows:  # nothing to learn from (every reward invalid): no update
            return {"updates": 0, "lr": self.scheduler.get_last_lr()[0], "responses": 0}
        p = self.cfg.ppo
        advantages, returns = ppo_targets([torch.tensor(r["token_rewards"]) for r in rows],
                                          [torch.tensor(r["token_values"]) for r in rows], p.gamma, p.lam, p.whiten_rewards)
        items = [{"ids": r["ids"], "mask": r["mask"], "old_logps": r["token_logp_old"], "old_values": r["token_values"],
                  "advantages": a.tolist(), "returns": g.tolist()} for r, a, g in zip(rows, advantages, returns, strict=True)]
        return {**self.passes(items, iteration, self._loss, METRICS), "responses": len(items)}

    def _loss(self, chunk: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        masks = [r["mask"] for r in chunk]
        input_ids, attention = right_padded([r["ids"] for r in chunk], self.pad, self.accelerator.device)
        out, values = self.model(input_ids=input_ids, attention_mask=attention)
        logps = token_logps(out.logits, input_ids, self.opt.temperature)
        mask = pad_right(masks, 0)[:, 1:].to(logps.device)

        def laid(key: str) -> torch.Tensor:
            return laid_out([r[key] for r in chunk], masks, logps)

        p = self.cfg.ppo
        return ppo_loss(logps, laid("old_logps"), laid("advantages"), values[:, :-1], laid("old_values"),
                        laid("returns"), mask, p.cliprange, p.cliprange_value, p.vf_coef)
