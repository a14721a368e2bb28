"""The resident loop of an online round (REFERENCE: "REBEL, online"): per iteration, sample with the policy
being trained, score, reward with the KL against the reference and the no-end-of-turn penalty, then take
`epochs_per_iteration` regression passes over the iteration's pairs. Engines and reward models stay loaded
for the whole round; sampling and scoring come in as callables (the stage binds an engine on the resident
policy and a reward backend), so this module needs neither.

Resume: a checkpoint every `checkpoint_every` iterations holds the model, optimizer and schedule (accelerate
state) and the loop's position; an iteration's rollouts are written as a shard before its regression, and a
resumed round reads a shard it already has instead of sampling again. Everything random is seeded by the
iteration (prompt order, sampling seeds, pass permutations), so a resumed round ends with the weights of an
uninterrupted one.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rebelflow.config.errors import DataError
from rebelflow.config.online import OnlineConfig
from rebelflow.ml.batching import batch_logps, pair_loss, split
from rebelflow.ml.chat import end_of_turn_ids, prompt_ids
from rebelflow.ml.driver import Checkpoints
from rebelflow.ml.online import (
    AdaptiveKL,
    cut_after_end_of_turn,
    learning_rate,
    pairs_within_prompts,
    response_kl,
    shaped_rewards,
)

Message = dict[str, str]
# sample(conversations, samples per conversation, seed, temperature) -> per conversation, per sample: token ids
Sampler = Callable[[list[list[Message]], int, int, float], list[list[list[int]]]]
Scorer = Callable[[list[tuple[list[Message], str]]], list[float]]  # NaN: invalid


class Rollouts(Protocol):
    """What an iteration samples. `collect` returns one row per response, the `samples` rows of a prompt
    next to each other, each with: `prompt` (position in `prompts`), `sample`, `messages` (the context
    the trained reply follows), `ids` and `mask` (context + reply, 1 on the reply), `has_end`, `response`,
    `dialogue` (the whole dialogue the reward scores; [] for a single reply), `branch_turn` (-1 for a
    single reply) and `invalid` (why it cannot be scored, or None)."""

    samples: int

    def collect(self, prompts: list[dict], seed: int, temperature: float, validation: bool) -> list[dict]:
        """Validation: one response per prompt (one whole dialogue)."""
        ...


class SingleTurn:
    """`samples` replies per prompt from `sample`, each cut after its first end-of-turn (REBEL online)."""

    def __init__(self, sample: Sampler, tokenizer, end_ids: list[int], samples: int):
        self.sample, self.tokenizer, self.end_ids, self.samples = sample, tokenizer, end_ids, samples

    def collect(self, prompts: list[dict], seed: int, temperature: float, validation: bool) -> list[dict]:
        conversations = [p["messages"] for p in prompts]
        rows = []
        for p, (conversation, samples) in enumerate(zip(
                conversations, self.sample(conversations, 1 if validation else self.samples, seed, temperature),
                strict=True)):
            context = prompt_ids(self.tokenizer, conversation)
            for j, ids in enumerate(samples):
                reply, has_end = cut_after_end_of_turn(ids, self.end_ids)
                rows.append({"prompt": p, "sample": j, "messages": conversation, "ids": context + reply,
                             "mask": [0] * len(context) + [1] * len(reply), "has_end": has_end,
                             "response": self.tokenizer.decode(reply, skip_special_tokens=True),
                             "dialogue": [], "branch_turn": -1, "invalid": None})
        return rows


def score_item(row: dict) -> tuple[list[Message], str]:
    """What the reward scores: the reply after its context, or a whole dialogue at its last reply."""
    if row["dialogue"]:
        return row["dialogue"][:-1], row["dialogue"][-1]["content"]
    return row["messages"], row["response"]


@dataclass
class Optimization:
    """The training settings an online round takes from the campaign's train section."""

    eta: float
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    max_grad_norm: float | None
    micro_batch_pairs: int  # pairs per forward/backward; a minibatch's gradient accumulates over them
    temperature: float  # sampling temperature; logprobs use the same scaling
    warmup_ratio: float
    total_updates: int  # over the whole campaign (the schedule anneals across rounds)
    first_update: int  # updates done by earlier rounds


def updates_per_iteration(cfg: OnlineConfig) -> int:
    """Per pass, one update per minibatch; a last, partial one counts (it steps with its share)."""
    return cfg.epochs_per_iteration * -(-cfg.pairs_per_iteration() // cfg.minibatch_pairs)


class MasterWeights(torch.nn.Module):
    """fp32 copies of trainable parameters held in bf16/fp16: the optimizer steps the copies and the model
    gets them rounded back after every step. Stepped in place, an Adam step of about lr (1e-7 to 3e-6 in
    the papers' settings) is far below bf16's resolution at the weights' scale and would mostly round away.
    Saved with the checkpoints, so a resumed round keeps the full-precision weights."""

    def __init__(self, params: list[torch.nn.Parameter]):
        super().__init__()
        self.params = params
        self.copies = torch.nn.ParameterList([torch.nn.Parameter(p.detach().float().clone()) for p in params])

    def take_grads(self) -> None:
        for copy, p in zip(self.copies, self.params, strict=True):
            copy.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def give_weights(self) -> None:
        for copy, p in zip(self.copies, self.params, strict=True):
            p.copy_(copy)


class OnlineLoop:
    def __init__(self, cfg: OnlineConfig, opt: Optimization, accelerator, model, tokenizer, reference,
                 rollouts: Rollouts, score: Scorer, prompts: list[dict], validation: list[dict] = (),
                 max_invalid_fraction: float = 1.0, after_update: Callable[[], None] | None = None):
        """`prompts` and `validation`: prompts rows (`messages`, and what the rollouts read besides).
        `after_update` runs whenever the weights changed before the next sampling (after each iteration's
        regression and after a resume): an engine outside the model takes the new weights there."""
        self.cfg, self.opt, self.accelerator, self.tokenizer = cfg, opt, accelerator, tokenizer
        self.reference, self.rollouts, self.score, self.prompts = reference, rollouts, score, prompts
        self.validation = list(validation)[: cfg.validation_prompts]
        self.max_invalid_fraction = max_invalid_fraction
        self.after_update = after_update or (lambda: None)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn_ids(tokenizer)[0]
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.masters = MasterWeights(trainable) if any(p.dtype != torch.float32 for p in trainable) else None
        stepped = self.masters.copies if self.masters is not None else trainable
        # lr set per update by the schedule
        optimizer = torch.optim.AdamW(stepped, lr=1.0, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        accelerator.register_for_checkpointing(scheduler)
        if self.masters is not None:
            accelerator.register_for_checkpointing(self.masters)
        self.kl = AdaptiveKL(cfg.kl_coef, cfg.adaptive_kl.target, cfg.adaptive_kl.horizon) if cfg.adaptive_kl else None

    def _lr_factor(self, step: int) -> float:
        update = self.opt.first_update + step + 1
        return learning_rate(min(update, self.opt.total_updates), self.opt.total_updates, self.opt.lr,
                             self.cfg.lr_schedule, self.opt.warmup_ratio)

    def prompt_order(self) -> list[int]:
        """This round's prompt indices in a seeded order, repeated (each pass reshuffled) as often as needed."""
        need, order, rounds = self.cfg.iterations * self.cfg.prompts_per_iteration, [], 0
        while len(order) < need:
            block = list(range(len(self.prompts)))
            random.Random(self.cfg.seed * 1000 + rounds + 104_729 * self.opt.first_update).shuffle(block)  # per round
            order += block
            rounds += 1
        return order[:need]

    def kl_coef(self) -> float:
        return self.kl.value if self.kl is not None else self.cfg.kl_coef

    def run(self, checkpoint_dir: Path, shards, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
        """All iterations of the round; `shards` keeps the rollouts: has(i), read(i), write(i, rows).
        Returns one metrics row per iteration."""
        from tqdm.auto import tqdm

        checkpoints = Checkpoints(self.accelerator, checkpoint_dir, self.cfg.checkpoint_every)
        start, history = self._resume(checkpoints, say)
        if start:
            self.after_update()
        order = self.prompt_order()
        for it in tqdm(range(start, self.cfg.iterations), initial=start, total=self.cfg.iterations,
                       desc="online iterations", unit="iteration"):
            started = time.time()
            if shards.has(it):
                rows = shards.read(it)
            else:
                batch = order[it * self.cfg.prompts_per_iteration:(it + 1) * self.cfg.prompts_per_iteration]
                rows = self.rollout(batch, it)
                shards.write(it, rows)
            row = {"iteration": it + 1, **rollout_metrics(rows), **self.regress(rows, it)}
            self.after_update()
            if self.kl is not None:
                row["kl_coef"] = self.kl.update(row["kl"], len(rows))
            if self.validation and ((it + 1) % self.cfg.validate_every == 0 or it + 1 == self.cfg.iterations):
                row.update(self.validate())
            row["seconds"] = time.time() - started
            history.append(row)
            say(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}))
            if checkpoints.due(it + 1, self.cfg.iterations):
                self._save(checkpoints, it + 1, history, say)
        return history

    def _resume(self, checkpoints: Checkpoints, say) -> tuple[int, list[dict]]:
        latest = checkpoints.latest()
        if latest is None:
            return 0, []
        self.accelerator.load_state(str(latest))
        meta = json.loads((latest / "loop.json").read_text())
        if self.kl is not None and meta.get("kl_coef") is not None:
            self.kl.value = meta["kl_coef"]
        say(f"resuming from checkpoint {latest.name}: {meta['update']} of {self.cfg.iterations} iterations done")
        return meta["update"], meta["metrics"]

    def _save(self, checkpoints: Checkpoints, iteration: int, history: list[dict], say) -> None:
        checkpoints.save(iteration, history, say)
        if self.kl is not None and self.accelerator.is_main_process:
            path = checkpoints.root / f"update-{iteration:06d}" / "loop.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "kl_coef": self.kl.value}))

    @torch.no_grad()
    def rollout(self, batch: list[int], iteration: int) -> list[dict[str, Any]]:
        """Sample, score; π_old and π_ref logprobs of every trained reply; shaped rewards. One row per
        response, the samples of a prompt next to each other."""
        seed = self.cfg.seed + 100_000 * (iteration + 1) + 7_919 * self.opt.first_update  # each round its own
        self.model.eval()
        rows = self.rollouts.collect([self.prompts[i] for i in batch], seed, self.opt.temperature, False)
        for r in rows:
            r.update(iteration=iteration + 1, prompt_index=batch[r.pop("prompt")])
        scores = self._scores(rows)
        invalid = sum(s != s for s in scores)  # NaN
        if invalid > self.max_invalid_fraction * len(rows):
            raise DataError(
                f"online iteration {iteration + 1}: {invalid} of {len(rows)} rewards are invalid, more than "
                f"score.max_invalid_fraction ({self.max_invalid_fraction}): the reward is failing, not noisy. "
                "Fix the reward (score a reply by hand to see why), or raise score.max_invalid_fraction."
            )
        unwrapped = self.accelerator.unwrap_model(self.model)
        old = self._logps(lambda *batch: batch_logps(unwrapped, *batch), rows)
        kl = response_kl(old, self._logps(self.reference.logps, rows))
        has_end = torch.tensor([r["has_end"] for r in rows])
        rewards = shaped_rewards(torch.tensor(scores, dtype=old.dtype), kl, has_end, self.kl_coef(),
                                 self.cfg.penalty_reward_value, self.cfg.reward_scale)
        for r, s, o, k, w in zip(rows, scores, old.tolist(), kl.tolist(), rewards.tolist(), strict=True):
            r.update(score=s, logp_old=o, kl=k, reward=w)
        return rows

    def _scores(self, rows: list[dict]) -> list[float]:
        """The reward of every row in one batched call; NaN for a row that cannot be scored."""
        valid = [r for r in rows if not r["invalid"]]
        values = iter(self.score([score_item(r) for r in valid]) if valid else [])
        return [float("nan") if r["invalid"] else next(values) for r in rows]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The mean score of one reply (one dialogue) per held-out prompt at the validation temperature
        (seeded alike every time, so validations differ only by the policy), and how many ended."""
        self.model.eval()
        rows = self.rollouts.collect(self.validation, self.cfg.seed + 7, self.cfg.validation_temperature, True)
        valid = [s for s in self._scores(rows) if s == s]
        return {"val_score": sum(valid) / max(1, len(valid)),
                "val_ended": sum(r["has_end"] for r in rows) / max(1, len(rows))}

    def _logps(self, logps, rows: list[dict]) -> torch.Tensor:
        """logps(ids, masks, temperature, pad) over the rows in chunks of a micro-batch's responses."""
        return torch.cat([logps([r["ids"] for r in c], [r["mask"] for r in c], self.opt.temperature, self.pad)
                          for c in split(rows, self.opt.micro_batch_pairs * 2)])

    def regress(self, rows: list[dict], iteration: int) -> dict[str, float]:
        """`epochs_per_iteration` passes over the iteration's pairs (a fresh seeded permutation each), one
        optimizer update per minibatch; pairs with an invalid score are left out."""
        samples = self.rollouts.samples
        pairs = [pair_row(rows[a], rows[b]) for a, b in pairs_within_prompts(len(rows) // samples, samples)]
        pairs = [p for p in pairs if p is not None]
        self.model.train()
        sums: dict[str, float] = {}
        updates = 0
        for epoch in range(self.cfg.epochs_per_iteration):
            order = list(range(len(pairs)))
            random.Random(self.cfg.seed * 7919 + iteration * 31 + epoch + 104_729 * self.opt.first_update).shuffle(order)
            for start in range(0, len(order), self.cfg.minibatch_pairs):
                metrics = self._update([pairs[i] for i in order[start:start + self.cfg.minibatch_pairs]])
                updates += 1
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
        out = {k: v / max(1, updates) for k, v in sums.items()}
        out.update(updates=updates, pairs=len(pairs), lr=self.scheduler.get_last_lr()[0])
        return out

    def _update(self, minibatch: list[dict]) -> dict[str, float]:
        """One optimizer update on a minibatch, its gradient accumulated over micro-batches (the loss is a
        mean over pairs, so each micro-batch's mean is weighted by its share of the minibatch)."""
        metrics: dict[str, float] = {}
        for chunk in split(minibatch, self.opt.micro_batch_pairs):
            loss, got = pair_loss(self.model, chunk, self.opt.eta, self.opt.temperature, self.pad)
            share = len(chunk) / self.cfg.minibatch_pairs  # a partial last minibatch steps with its share
            self.accelerator.backward(loss * share)
            for k, v in got.items():
                metrics[k] = metrics.get(k, 0.0) + v * len(chunk) / len(minibatch)
        if self.masters is not None:
            self.masters.take_grads()
        if self.opt.max_grad_norm:
            stepped = self.masters.copies if self.masters is not None else self.model.parameters()
            self.accelerator.clip_grad_norm_(stepped, self.opt.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.masters is not None:
            self.masters.give_weights()
        self.scheduler.step()
        metrics.pop("tokens", None)
        return metrics


def pair_row(a: dict, b: dict) -> dict | None:
    """A training pair from two responses to one prompt (None when either score is invalid)."""
    if a["score"] != a["score"] or b["score"] != b["score"]:  # NaN
        return None
    return {"chosen_ids": a["ids"], "chosen_mask": a["mask"], "chosen_logp_old": a["logp_old"],
            "chosen_reward": a["reward"], "rejected_ids": b["ids"], "rejected_mask": b["mask"],
            "rejected_logp_old": b["logp_old"], "rejected_reward": b["reward"]}


def rollout_metrics(rows: list[dict]) -> dict[str, float]:
    """Means over the rows with a valid score (a dialogue whose user failed has no reply to measure)."""
    valid = [r for r in rows if r["score"] == r["score"]]
    n = max(1, len(valid))
    return {
        "score": sum(r["score"] for r in valid) / n,
        "reward": sum(r["reward"] for r in valid) / n,
        "kl": sum(r["kl"] for r in valid) / n,
        "penalty_rate": sum(not r["has_end"] for r in valid) / n,
        "response_tokens": sum(sum(r["mask"]) for r in valid) / n,
        "invalid_scores": len(rows) - len(valid),
    }
