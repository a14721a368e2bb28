"""The training driver shared by train, sft and rm_train (and next the online loop).

A stage supplies a `Fit`: its examples, its loss, what it validates, and the settings of its config
section (optimizer, schedule, epochs, seed, checkpoints, tracking). `fit` does the rest — the seeded
update plan, per-rank gradient accumulation, AdamW and a cosine schedule with warmup (DeepSpeed ZeRO when
the launch config asks for it), validation every `eval_every` updates, a point per update to the
tracker, checkpoints every `checkpoint_every` updates and resume from the latest, and the gathered weights.
`save_model_artifact` writes the model artifact (HF folder, metrics.jsonl, summary) on the main process
and ends the process group on every rank.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from rebelflow.config.errors import ConfigError, DataError
from rebelflow.ml.batching import means_over_rows, rank_slice, split, update_plan
from rebelflow.ml.distributed import (
    finish_distributed,
    make_accelerator,
    mean_over_ranks,
    sum_over_ranks,
    using_deepspeed,
    world_size,
    zero_stage,
)
from rebelflow.ml.models import MasterWeights, save_policy
from rebelflow.ml.tracking import Tracker

Loss = Callable[[Any, list[Any]], tuple[torch.Tensor, dict[str, float]]]  # (model, micro-batch) -> (mean loss, metrics)


class TrainingSettings(Protocol):
    """The settings a training stage's config section gives the driver."""

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float | None
    epochs: int
    seed: int
    checkpoint_every: int
    tracking: dict | None


@dataclass
class Fit:
    """What one training stage trains: its examples and loss, and what it validates."""

    section: str  # the config section, for messages: "train", "sft"
    per_update_key: str  # the setting that sets `per_update`, e.g. "pairs_per_update"
    items: list[Any]  # training examples (pairs, tokenized demonstrations)
    per_update: int  # examples per optimizer update, all ranks together
    micro_batch: int  # examples per forward pass
    loss: Loss
    validation: list[Any] = field(default_factory=list)
    validation_keys: tuple[str, ...] = ()  # metrics of the loss averaged over the validation rows
    validation_prefix: str = "val_"
    eval_every: int | None = None
    validate_before: bool = False  # also validate the model as loaded (e.g. an untrained reward head)
    hashed_settings: dict[str, Any] = field(default_factory=dict)  # the stage's config, logged by the tracker


@dataclass
class Trained:
    """A finished fit: the prepared model, its per-update history and the gathered weights (main process)."""

    accelerator: Any
    model: Any
    history: list[dict[str, float]]
    weights: dict[str, torch.Tensor]
    tracker: Tracker
    seconds: float
    before: dict[str, float]  # validation metrics before the first update ({} without validation)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def plan_updates(fit: Fit, settings: TrainingSettings, what: str, fix: str) -> list[list[int]]:
    """The update plan, or a DataError naming the setting when not one full update fits (checked before a
    model loads)."""
    plan = update_plan(len(fit.items), fit.per_update, settings.epochs, settings.seed)
    if not plan:
        key = f"{fit.section}.{fit.per_update_key}"
        raise DataError(f"{len(fit.items)} {what}, fewer than {key} ({fit.per_update}): no full update. {fix}")
    return plan


def fit_model(model, fit: Fit, settings: TrainingSettings, plan: list[list[int]], checkpoint_dir: Path) -> Trained:
    """Train `model` through `plan`, resuming from the latest checkpoint under `checkpoint_dir`."""
    steps = per_rank_accumulation(fit.per_update, fit.micro_batch, f"{fit.section}.{fit.per_update_key}")
    accelerator = make_accelerator(steps, fit.micro_batch, settings.max_grad_norm)
    deepspeed = using_deepspeed()
    if not deepspeed:  # on its device first: the fp32 copies of 16-bit weights are made where they live
        model = model.to(accelerator.device)
    masters = MasterWeights.where_needed(model, deepspeed)  # 16-bit weights step through fp32 copies
    optimizer = adamw(masters.copies if masters is not None else model.parameters(), settings.lr, settings.betas,
                      settings.eps, settings.weight_decay)
    scheduler = cosine_schedule(optimizer, len(plan), settings.warmup_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    if masters is not None:
        accelerator.register_for_checkpointing(masters)  # a resumed fit keeps the full-precision weights
    tracker = Tracker(settings.tracking if accelerator.is_main_process else None, fit.hashed_settings)
    validate = None
    if fit.validation:
        def validate() -> dict[str, float]:
            means = means_over_rows(accelerator, fit.validation, fit.micro_batch,
                                    lambda chunk: fit.loss(model, chunk)[1], fit.validation_keys)
            return {f"{fit.validation_prefix}{k}": v for k, v in means.items()}
    started = time.time()
    loop = UpdateLoop(accelerator, model, optimizer, scheduler, settings.max_grad_norm, masters)
    before = loop.evaluate(validate) if validate is not None and fit.validate_before else {}
    history = loop.run(
        len(plan),
        micro_batches=lambda u: split(rank_slice([fit.items[i] for i in plan[u]], accelerator), fit.micro_batch),
        loss_fn=lambda micro: fit.loss(model, micro),
        checkpoints=Checkpoints(accelerator, checkpoint_dir, settings.checkpoint_every),
        evaluate=validate,
        eval_every=fit.eval_every,
        on_update=lambda row: tracker.log(row, step=int(row["update"])),
    )
    weights = accelerator.get_state_dict(model)  # collective: ZeRO-3 gathers the 16-bit weights of every rank
    return Trained(accelerator, model, history, weights, tracker, time.time() - started, before)


def save_model_artifact(trained: Trained, writer_of: Callable[[], Any], tokenizer, summary: dict[str, Any],
                        card: str, lora_base: tuple | None = None) -> None:
    """On the main process: the model (HF folder), metrics.jsonl and the summary, through the store's writer
    (`writer_of()` opens it); the tracker gets the summary. Every rank then leaves the process group."""
    if trained.main:
        with writer_of() as w:
            write_model(w, trained.accelerator, trained.model, trained.weights, tokenizer, trained.history, summary,
                        card, lora_base)
        trained.tracker.finish(summary)
    finish_distributed()


def write_model(w, accelerator, model, weights: dict, tokenizer, history: list[dict], summary: dict[str, Any],
                card: str, lora_base: tuple | None = None) -> None:
    """Finish a model artifact in an open writer: the HF folder, metrics.jsonl (one line per history row),
    the checkpoints removed, the summary and card."""
    save_policy(accelerator, model, weights, tokenizer, w.model_dir(), lora_base)
    (w.tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    shutil.rmtree(w.tmp / "checkpoints", ignore_errors=True)
    w.finish(summary=summary, card=card)


def common_summary(trained: Trained, curve_keys: tuple[str, ...]) -> dict[str, Any]:
    """The summary entries every training stage reports."""
    history = trained.history
    return {
        "updates": len(history),
        "first loss": round(history[0]["loss"], 5),
        "last loss": round(history[-1]["loss"], 5),
        "mean tokens per second": round(sum(h["tokens_per_second"] for h in history) / len(history), 1),
        "seconds (this run)": round(trained.seconds, 1),
        "processes": trained.accelerator.num_processes,
        "deepspeed ZeRO stage": zero_stage(trained.accelerator),
        "curve": curve(history, curve_keys),
    }


class Checkpoints:
    """Resumable checkpoints every `every` updates under `root` (accelerate's state plus loop.json, written
    last, so a folder with loop.json is complete); only the latest is kept."""

    def __init__(self, accelerator, root: Path, every: int):
        self.accelerator, self.root, self.every = accelerator, root, every

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    def due(self, update: int, total: int) -> bool:
        return update % self.every == 0 and update < total

    def save(self, update: int, history: list[dict], say: Callable[[str], None]) -> None:
        accelerator, path = self.accelerator, self.root / f"update-{update:06d}"
        accelerator.save_state(str(path))  # every rank writes its part (its ZeRO partition under DeepSpeed)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (path / "loop.json").write_text(json.dumps({"update": update, "metrics": history}))  # last: complete
            for old in self.root.glob("update-*"):
                if old != path:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()  # no rank goes on (or reports the checkpoint) before it is complete
        if accelerator.is_main_process:
            say(f"checkpoint saved at update {update}: {path}")


class UpdateLoop:
    """Optimizer updates with gradient accumulation over micro-batches, resumable from a checkpoint."""

    def __init__(self, accelerator, model, optimizer, scheduler, max_grad_norm: float | None,
                 masters: MasterWeights | None = None):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.max_grad_norm, self.masters = max_grad_norm, masters

    def run(self, total: int, micro_batches: Callable[[int], list[Any]],
            loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]], checkpoints: Checkpoints,
            evaluate: Callable[[], dict[str, float]] | None = None, eval_every: int | None = None,
            on_update: Callable[[dict[str, float]], None] | None = None,
            say: Callable[[str], None] = lambda line: print(line, flush=True)) -> list[dict[str, float]]:
        """Run updates [start, total), start = the latest checkpoint's update; returns one metrics row per
        update: the mean of the micro-batch metrics, lr, tokens/s, and the evaluation metrics every
        `eval_every` updates and at the end. The main process prints each row and hands it to `on_update`."""
        from tqdm.auto import tqdm

        start, history = self._resume(checkpoints, total, say)
        quiet = not self.accelerator.is_main_process
        self.model.train()
        for u in tqdm(range(start, total), initial=start, total=total, desc="updates", unit="update", disable=quiet):
            row = self._update(micro_batches(u), loss_fn)
            row.update(update=u + 1, lr=self.scheduler.get_last_lr()[0])
            if evaluate is not None and ((u + 1) % eval_every == 0 or u + 1 == total):
                row.update(self.evaluate(evaluate))
            history.append(row)
            if not quiet:
                say(json.dumps({k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in row.items()}))
                if on_update is not None:
                    on_update(row)
            if checkpoints.due(u + 1, total):
                checkpoints.save(u + 1, history, say)
        return history

    def _resume(self, checkpoints: Checkpoints, total: int, say: Callable[[str], None]) -> tuple[int, list[dict]]:
        self.accelerator.register_for_checkpointing(self.scheduler)
        latest = checkpoints.latest()
        if latest is None:
            return 0, []
        self.accelerator.load_state(str(latest))
        meta = json.loads((latest / "loop.json").read_text())
        say(f"resuming from checkpoint {latest.name}: {meta['update']} of {total} updates already done")
        return meta["update"], meta["metrics"]

    def _update(self, micros: list[Any], loss_fn) -> dict[str, float]:
        """One optimizer update over `micros`: accumulate, clip, step; returns the ranks' mean metrics."""
        accelerator, started, sums, tokens = self.accelerator, time.time(), {}, 0
        for micro in micros:
            with accelerator.accumulate(self.model):
                loss, metrics = loss_fn(micro)
                accelerator.backward(loss)
                if accelerator.sync_gradients and self.masters is not None:
                    self.masters.take_grads()  # the accumulated (and all-reduced) gradients, in fp32
                if accelerator.sync_gradients and self.max_grad_norm:
                    stepped = self.masters.copies if self.masters is not None else self.model.parameters()
                    accelerator.clip_grad_norm_(stepped, self.max_grad_norm)
                self.optimizer.step()  # accelerate steps only at the end of an update's accumulation
                self.optimizer.zero_grad()
                if accelerator.sync_gradients and self.masters is not None:
                    self.masters.give_weights()
            tokens += int(metrics.pop("tokens", 0))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        self.scheduler.step()
        row = mean_over_ranks(accelerator, {k: v / len(micros) for k, v in sums.items()})
        row["tokens_per_second"] = sum_over_ranks(accelerator, tokens) / (time.time() - started)
        return row

    def evaluate(self, evaluate: Callable[[], dict[str, float]]) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            out = evaluate()
        self.model.train()
        return out


def per_rank_accumulation(per_update: int, micro_batch: int, where: str) -> int:
    """Micro-batches each rank accumulates per update: every rank takes an equal slice of the update."""
    world = world_size()
    if per_update % (world * micro_batch):
        raise ConfigError(
            f"[{where}] {per_update} per update cannot be split into equal micro-batches of {micro_batch} over "
            f"{world} processes. Make it a multiple of {world * micro_batch} (processes × micro-batch)."
        )
    return per_update // (world * micro_batch)


def adamw(parameters, lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
    params = [p for p in parameters if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def cosine_schedule(optimizer, total_updates: int, warmup_ratio: float):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, int(round(warmup_ratio * total_updates)), total_updates)


def latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p.parent for p in root.glob("update-*/loop.json"))
    return done[-1] if done else None


def curve(history: list[dict[str, float]], keys: tuple[str, ...], points: int = 40) -> list[dict[str, float]]:
    """About `points` rows of the training history for the UI, plus every row with metrics that only some
    rows have (the evaluations), so a curve never loses its validation points."""
    step = max(1, len(history) // points)
    common = set.intersection(*(set(r) for r in history)) if history else set()
    rows = [r for i, r in enumerate(history)
            if i % step == 0 or i == len(history) - 1 or (set(r) - common) & set(keys)]
    return [{k: round(r[k], 5) if isinstance(r.get(k), float) else r.get(k) for k in keys if k in r} for r in rows]
