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

Over several processes (DDP or DeepSpeed ZeRO through accelerate): each rank samples, scores and takes the
logprobs of an equal share of the iteration's prompts on its own engine, the rows are gathered in prompt
order on every rank, and each minibatch is shared out over the ranks, so the update is the one process's
(the loss is a mean over the minibatch's pairs). The main process alone writes shards and prints.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rebelflow.config.errors import ConfigError, DataError
from rebelflow.config.online import OnlineConfig
from rebelflow.ml.batching import batch_logps, pair_loss, split
from rebelflow.ml.chat import end_of_turn_ids, prompt_ids
from rebelflow.ml.distributed import Ranks, from_main, full_weights, gather_lists, using_deepspeed, zero_stage
from rebelflow.ml.driver import Checkpoints
from rebelflow.ml.models import MasterWeights
from rebelflow.ml.online import (
    AdaptiveKL,
    cut_after_end_of_turn,
    learning_rate,
    pairs_within_prompts,
    response_kl,
    shaped_rewards,
)
from rebelflow.store.local import write_json_atomic

Message = dict[str, str]
# sample(conversations, samples per conversation, seed, temperature) -> per conversation, per sample: token ids
Sampler = Callable[[list[list[Message]], int, int, float], list[list[list[int]]]]
Scorer = Callable[[list[tuple[list[Message], str]]], list[float]]  # NaN: invalid
METRICS = ("loss", "sign_agreement", "mean_abs_d", "mean_eta_reward_diff")  # of losses.rebel_loss, per update


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
    return cfg.epochs_per_iteration * -(-cfg.items_per_iteration() // cfg.minibatch())


def micro_batches_per_update(minibatch_pairs: int, micro_batch_pairs: int, ranks: int) -> int:
    """Micro-batches each rank runs per update: its share of a minibatch (the ranks take its pairs in turn),
    in micro-batches. Every rank runs this many (one short of pairs repeats a micro-batch with weight 0), so
    gradient accumulation and the ranks' gradient exchange stay in step."""
    per_rank = math.ceil(minibatch_pairs / ranks)
    return math.ceil(per_rank / micro_batch_pairs)


class OnlineLoop:
    def __init__(self, cfg: OnlineConfig, opt: Optimization, accelerator, model, tokenizer, reference,
                 rollouts: Rollouts, score: Scorer, prompts: list[dict], validation: list[dict] = (),
                 max_invalid_fraction: float = 1.0, after_update: Callable[[], None] | None = None,
                 after_sampling: Callable[[], None] | None = None, gather_to_sample: bool = True):
        """`prompts` and `validation`: prompts rows (`messages`, and what the rollouts read besides).
        `after_update` runs whenever the weights changed before the next sampling (after each iteration's
        regression and after a resume): an engine outside the model takes the new weights there.
        `after_sampling` runs when an iteration's (or a validation's) sampling is done, or its rollouts were
        read back from a shard: an engine can free its memory for the trainer there. `gather_to_sample`: the
        engine generates with the trained model itself (transformers), so under ZeRO-3 it needs the whole
        model gathered while it samples (a vLLM engine holds its own weights)."""
        self.cfg, self.opt, self.accelerator, self.tokenizer = cfg, opt, accelerator, tokenizer
        self.ranks, self.rank = accelerator.num_processes, accelerator.process_index
        self.main = accelerator.is_main_process
        if cfg.prompts_per_iteration % self.ranks:
            raise ConfigError(f"online.prompts_per_iteration ({cfg.prompts_per_iteration}) cannot be shared equally "
                              f"over {self.ranks} processes: make it a multiple of {self.ranks}.")
        self.gather_to_sample = gather_to_sample
        self.group = None if self.ranks == 1 else Ranks(self.rank, self.ranks)
        self.micros = micro_batches_per_update(cfg.minibatch(), opt.micro_batch_pairs, self.ranks)
        accelerator.gradient_accumulation_steps = self.micros  # before prepare: DeepSpeed takes it from there
        self.reference, self.rollouts, self.score, self.prompts = reference, rollouts, score, prompts
        self.validation = list(validation)[: cfg.validation_prompts]
        self.max_invalid_fraction = max_invalid_fraction
        self.after_update = after_update or (lambda: None)
        self.after_sampling = after_sampling or (lambda: None)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn_ids(tokenizer)[0]
        self.masters = MasterWeights.where_needed(model, using_deepspeed())
        stepped = self.masters.copies if self.masters is not None else [p for p in model.parameters() if p.requires_grad]
        # lr set per update by the schedule
        optimizer = torch.optim.AdamW(stepped, lr=1.0, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        if using_deepspeed():  # a launch config's own number would step every micro-batch
            steps = accelerator.deepspeed_engine_wrapped.engine.gradient_accumulation_steps()
            if steps != self.micros:
                raise ConfigError(f"DeepSpeed accumulates over {steps} micro-batches, the online round needs "
                                  f"{self.micros}: remove gradient_accumulation_steps from the accelerate/DeepSpeed "
                                  "config (rebelflow sets it).")
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

    def policy(self):
        """The policy being trained, unwrapped (what samples, what is pushed to an engine and saved)."""
        return self.accelerator.unwrap_model(self.model)

    def run(self, checkpoint_dir: Path, shards, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
        """All iterations of the round; `shards` keeps the rollouts: has(i), read(i), write(i, rows) (None on
        every process but the main one). Returns one metrics row per iteration."""
        from tqdm.auto import tqdm

        if not self.main:
            say = lambda line: None  # noqa: E731
        checkpoints = Checkpoints(self.accelerator, checkpoint_dir, self.cfg.checkpoint_every)
        start, history = self._resume(checkpoints, say)
        if start:
            self.after_update()
        order = self.prompt_order()
        for it in tqdm(range(start, self.cfg.iterations), initial=start, total=self.cfg.iterations,
                       desc="online iterations", unit="iteration", disable=not self.main):
            started = time.time()
            if from_main(self.group, shards.has(it) if self.main else None):
                rows = from_main(self.group, shards.read(it) if self.main else None)
                self.after_sampling()  # no sampling this time: the engine rests all the same
            else:
                batch = order[it * self.cfg.prompts_per_iteration:(it + 1) * self.cfg.prompts_per_iteration]
                rows = self.rollout(batch, it)
                if self.main:
                    shards.write(it, rows)
            row = {"iteration": it + 1, **rollout_metrics(rows), **self.regress(rows, it)}
            self.after_update()
            if self.kl is not None:
                row["kl_coef"] = self.kl.update(row["kl"], len(rows))
            if self.validation and ((it + 1) % self.cfg.validate_every == 0 or it + 1 == self.cfg.iterations):
                row.update(self.validate())
            row["seconds"] = time.time() - started
            history.append(row)
            say(json.dumps({k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in row.items()}))
            if checkpoints.due(it + 1, self.cfg.iterations):
                self._save(checkpoints, it + 1, history, say)
        return history

    def _resume(self, checkpoints: Checkpoints, say) -> tuple[int, list[dict]]:
        latest = checkpoints.latest()
        if latest is None:
            return 0, []
        meta = json.loads((latest / "loop.json").read_text())
        launch = {"processes": self.ranks, "zero_stage": zero_stage(self.accelerator)}
        if {k: meta[k] for k in launch if k in meta} != {k: v for k, v in launch.items() if k in meta}:
            raise ConfigError(
                f"the checkpoint {latest} was written by {meta['processes']} process(es) under ZeRO stage "
                f"{meta['zero_stage']}; this launch has {self.ranks} under {launch['zero_stage']}. Resume with the "
                f"launcher that wrote it, or delete {checkpoints.root} to start the round over."
            )
        self.accelerator.load_state(str(latest))
        if self.kl is not None and meta.get("kl_coef") is not None:
            self.kl.value = meta["kl_coef"]
        say(f"resuming from checkpoint {latest.name}: {meta['update']} of {self.cfg.iterations} iterations done")
        return meta["update"], meta["metrics"]

    def _save(self, checkpoints: Checkpoints, iteration: int, history: list[dict], say) -> None:
        checkpoints.save(iteration, history, say)
        if self.main:  # what a resume must match, and the adaptive KL coefficient
            path = checkpoints.root / f"update-{iteration:06d}" / "loop.json"
            extra = {"processes": self.ranks, "zero_stage": zero_stage(self.accelerator),
                     "kl_coef": None if self.kl is None else self.kl.value}
            write_json_atomic(path, {**json.loads(path.read_text()), **extra})

    def share(self, items: list) -> list:
        """This rank's contiguous share of `items` (equal shares when the ranks divide them)."""
        return items[len(items) * self.rank // self.ranks:len(items) * (self.rank + 1) // self.ranks]

    def gathered(self, mine: list) -> list:
        """Every rank's list, joined in rank order, on every rank."""
        if self.ranks == 1:
            return mine
        return [x for part in gather_lists(self.group, mine) for x in part]

    @torch.no_grad()
    def rollout(self, batch: list[int], iteration: int) -> list[dict[str, Any]]:
        """Sample, score; π_old and π_ref logprobs of every trained reply; shaped rewards. One row per
        response, the samples of a prompt next to each other. Each rank does its share of the prompts (with
        its own sampling seeds); every rank returns all rows."""
        seed = self.cfg.seed + 100_000 * (iteration + 1) + 7_919 * self.opt.first_update  # each round its own
        seed += 50_021 * self.rank
        batch = self.share(batch)
        self.model.eval()
        unwrapped = self.accelerator.unwrap_model(self.model)
        with self._sampling_weights(unwrapped):  # ZeRO-3: transformers samples on the whole model
            rows = self.rollouts.collect([self.prompts[i] for i in batch], seed, self.opt.temperature, False)
        self.after_sampling()
        with full_weights(self.accelerator, unwrapped):  # ZeRO-3: top-k and LoRA references share the policy's modules
            rows = self._rewarded(rows, batch, iteration, unwrapped)
        rows = self.gathered(rows)
        invalid = sum(r["score"] != r["score"] for r in rows)  # NaN
        if invalid > self.max_invalid_fraction * len(rows):
            raise DataError(
                f"online iteration {iteration + 1}: {invalid} of {len(rows)} rewards are invalid, more than "
                f"score.max_invalid_fraction ({self.max_invalid_fraction}): the reward is failing, not noisy. "
                "Fix the reward (score a reply by hand to see why), or raise score.max_invalid_fraction."
            )
        return rows

    def _sampling_weights(self, unwrapped):
        return full_weights(self.accelerator, unwrapped) if self.gather_to_sample else nullcontext()

    def _rewarded(self, rows: list[dict], batch: list[int], iteration: int, unwrapped) -> list[dict[str, Any]]:
        """Scores, π_old and reference logprobs, KL and shaped rewards of this rank's rows."""
        for r in rows:
            r.update(iteration=iteration + 1, prompt_index=batch[r.pop("prompt")])
        scores = self._scores(rows)
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
        (seeded alike every time, so validations differ only by the policy), and how many ended. The ranks
        share the prompts out."""
        self.model.eval()
        with self._sampling_weights(self.accelerator.unwrap_model(self.model)):
            rows = self.rollouts.collect(self.share(self.validation), self.cfg.seed + 7 + 50_021 * self.rank,
                                         self.cfg.validation_temperature, True)
        self.after_sampling()
        rows = self.gathered([(s, r["has_end"]) for s, r in zip(self._scores(rows), rows, strict=True)])
        valid = [s for s, _ in rows if s == s]
        return {"val_score": sum(valid) / max(1, len(valid)),
                "val_ended": sum(ended for _, ended in rows) / max(1, len(rows))}

    def _logps(self, logps, rows: list[dict]) -> torch.Tensor:
        """logps(ids, masks, temperature, pad) over the rows in chunks of a micro-batch's responses."""
        if not rows:
            return torch.zeros(0)
        return torch.cat([logps([r["ids"] for r in c], [r["mask"] for r in c], self.opt.temperature, self.pad)
                          for c in split(rows, self.opt.micro_batch_pairs * 2)])

    def regress(self, rows: list[dict], iteration: int) -> dict[str, float]:
        """`epochs_per_iteration` regression passes over the iteration's pairs; pairs with an invalid score are
        left out."""
        samples = self.rollouts.samples
        pairs = [pair_row(rows[a], rows[b]) for a, b in pairs_within_prompts(len(rows) // samples, samples)]
        pairs = [p for p in pairs if p is not None]
        out = self.passes(pairs, iteration, lambda chunk: pair_loss(self.model, chunk, self.opt.eta,
                                                                    self.opt.temperature, self.pad), METRICS)
        return {**out, "pairs": len(pairs)}

    def passes(self, items: list[dict], iteration: int, loss_of, keys: tuple[str, ...]) -> dict[str, float]:
        """`epochs_per_iteration` passes over `items` (a fresh seeded permutation each), one optimizer update
        per minibatch of `online.minibatch()` items; `loss_of(micro-batch)` gives (loss, metrics). Returns the
        means of `keys` over the updates, the updates and the last learning rate."""
        self.model.train()
        sums: dict[str, float] = {}
        updates, size = 0, self.cfg.minibatch()
        for epoch in range(self.cfg.epochs_per_iteration):
            order = list(range(len(items)))
            random.Random(self.cfg.seed * 7919 + iteration * 31 + epoch + 104_729 * self.opt.first_update).shuffle(order)
            for start in range(0, len(order), size):
                metrics = self._update([items[i] for i in order[start:start + size]], loss_of, keys)
                updates += 1
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
        out = {k: v / max(1, updates) for k, v in sums.items()}
        out.update(updates=updates, lr=self.scheduler.get_last_lr()[0])
        return out

    def micro_batches(self, minibatch: list[dict]) -> list[tuple[list[dict], int]]:
        """This rank's micro-batches of a minibatch, with their weights (pairs): the ranks take the pairs in
        turn; a rank short of pairs repeats a micro-batch with weight 0, so all run `self.micros`."""
        chunks = split(minibatch[self.rank::self.ranks], self.opt.micro_batch_pairs)
        out = [(c, len(c)) for c in chunks]
        return out + [(minibatch[:1], 0)] * (self.micros - len(out))

    def _update(self, minibatch: list[dict], loss_of, keys: tuple[str, ...]) -> dict[str, float]:
        """One optimizer update on a minibatch, its gradient accumulated over micro-batches and summed over
        the ranks. The loss is a mean over the minibatch's items (pairs or responses), so each micro-batch's
        mean loss is weighted by its share of `online.minibatch()` (a partial last minibatch steps with its
        share), times the micro-batches and ranks that accelerate and the gradient exchange average over."""
        accelerator = self.accelerator
        sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=accelerator.device)
        for chunk, weight in self.micro_batches(minibatch):
            with accelerator.accumulate(self.model):
                loss, got = loss_of(chunk)
                accelerator.backward(loss * (weight * self.micros * self.ranks / self.cfg.minibatch()))
                sums += torch.tensor([got[k] * weight for k in keys] + [weight], dtype=torch.float64,
                                     device=accelerator.device)
                if accelerator.sync_gradients:
                    self._step()
        if self.ranks > 1:
            sums = accelerator.reduce(sums, "sum")
        self.scheduler.step()
        return {k: v / max(1.0, sums[-1].item()) for k, v in zip(keys, sums.tolist(), strict=False)}

    def _step(self) -> None:
        """The optimizer step at the end of an update's accumulation: through the fp32 copies when the
        trained weights are 16-bit (DeepSpeed steps its own), clipped at max_grad_norm."""
        if self.masters is not None:
            self.masters.take_grads()
        if self.opt.max_grad_norm:
            stepped = self.masters.copies if self.masters is not None else self.model.parameters()
            self.accelerator.clip_grad_norm_(stepped, self.opt.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.masters is not None:
            self.masters.give_weights()


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
