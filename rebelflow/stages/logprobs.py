"""logprobs: the round's starting policy's summed log-probabilities of every pair's chosen and rejected
reply (π_old in the REBEL loss), computed once per round by the trainer's own forward function.

Consumes a prepare artifact and the policy; produces the same rows (train and validation splits) plus
`chosen_logp_old` and `rejected_logp_old`. Pairs are sorted by length and batched with padding to the
longest sequence of each batch. Under `accelerate launch` (logprobs.launcher) the batches are shared out
over the ranks (ZeRO-3 partitions the weights when the launch config asks for DeepSpeed) and gathered
back in row order on the main process, which writes the artifact. The fingerprint includes the hardware
fingerprint (torch, device, dtype, attention kernel) of the interpreter that runs the stage (the planner asks
it: planning.environments.hardware_key), so another machine recomputes instead of reusing; the stage
checks it runs where it was keyed and records where it ran ("ran on").

Run alone: python -m rebelflow.stages.logprobs configs/demo-rebel.yaml --round 1
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from rebelflow.config.campaign import LogprobsConfig
from rebelflow.config.errors import ConfigError
from rebelflow.ml.batching import batch_logps, pad_id_of
from rebelflow.ml.chat import policy_tokenizer
from rebelflow.ml.distributed import finish_distributed, make_accelerator, zero_stage
from rebelflow.ml.models import hardware_fingerprint, load_causal_lm
from rebelflow.stages.prepare import SCHEMA as PREPARE_SCHEMA
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "logprobs", 2, "dataset"  # 2: records the hardware it ran on
SCHEMA = PREPARE_SCHEMA.append(pa.field("chosen_logp_old", pa.float64())).append(
    pa.field("rejected_logp_old", pa.float64())
)


class Settings(LogprobsConfig):
    UNHASHED: ClassVar[set[str]] = {"launcher"}

    temperature: float  # the sampling temperature: logits are divided by it, as when sampling
    hardware: str


def batches(rows: list[dict], size: int) -> list[list[int]]:
    """Row indices in batches of similar length (sorted), so padding stays small."""
    order = sorted(range(len(rows)), key=lambda i: max(len(rows[i]["chosen_ids"]), len(rows[i]["rejected_ids"])))
    return [order[s : s + size] for s in range(0, len(order), size)]


@torch.no_grad()
def compute(model, tokenizer, rows: list[dict], settings: Settings, rank: int = 0, ranks: int = 1) -> dict[int, tuple]:
    """{row index: (chosen_logp_old, rejected_logp_old)} for this rank's share of the batches (every
    ranks-th batch). Every rank runs the same number of forward passes, as ZeRO-3 needs: a rank short of
    a batch repeats one and drops its result."""
    pad = pad_id_of(tokenizer)
    every = batches(rows, settings.batch_pairs)
    mine = every[rank::ranks]
    rounds = -(-len(every) // ranks)
    out: dict[int, tuple] = {}
    for n in tqdm(range(rounds), desc="logprobs", unit="batch", disable=rank != 0):
        batch = mine[n] if n < len(mine) else every[0]
        picked = [rows[i] for i in batch]
        sides = [
            batch_logps(model, [r[f"{side}_ids"] for r in picked], [r[f"{side}_mask"] for r in picked],
                        settings.temperature, pad).tolist()
            for side in ("chosen", "rejected")
        ]
        if n < len(mine):
            out.update(zip(batch, zip(*sides, strict=True), strict=True))
    return out


def run(settings: Settings, pairs: ArtifactRef, policy: ArtifactRef, *, store: Store) -> ArtifactRef:
    from accelerate.utils import gather_object
    ref = artifact_ref(NAME, VERSION, KIND, settings, [pairs, policy])
    if store.is_complete(ref, quarantine=True):
        return ref
    ran_on = hardware_fingerprint(settings.dtype, settings.attn_implementation)
    if ran_on != settings.hardware:
        raise ConfigError(
            f"logprobs was planned for {settings.hardware} but runs on {ran_on}: π_old would be filed under "
            "another machine's key and reused there. Plan and run on the machine and environment that compute "
            "logprobs (rebelflow run there, or a worker there), or set logprobs.launcher to this interpreter."
        )
    path = store.model_path(policy)
    tokenizer = policy_tokenizer(path, policy)
    model = load_causal_lm(path, settings.dtype, settings.attn_implementation, policy.revision)
    accelerator = make_accelerator(1, settings.batch_pairs)
    if zero_stage(accelerator) == 3:  # partitioned weights for inference too; below 3 every rank holds them all
        model = accelerator.prepare(model)
    else:
        model = model.to(accelerator.device)
    model.eval()
    results = {}
    for split in store.manifest(pairs)["splits"]:
        rows = store.read_rows(pairs, split)
        mine = compute(model, tokenizer, rows, settings, accelerator.process_index, accelerator.num_processes)
        gathered = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
        results[split] = (rows, {i: v for part in gathered for i, v in part.items()})
    if accelerator.is_main_process:
        with store.writer(ref, VERSION, hashed_settings(settings), [pairs, policy]) as w:
            summary = {"hardware": settings.hardware, "ran on": ran_on, "processes": accelerator.num_processes}
            for split, (rows, values) in results.items():
                for i, row in enumerate(rows):  # back in row order
                    row["chosen_logp_old"], row["rejected_logp_old"] = values[i]
                w.write_shard(split, 0, rows, SCHEMA)
                summary[f"{split} pairs"] = len(rows)
                summary[f"{split} mean chosen logp"] = round(sum(r["chosen_logp_old"] for r in rows) / len(rows), 4)
                summary[f"{split} mean rejected logp"] = round(sum(r["rejected_logp_old"] for r in rows) / len(rows), 4)
            w.finish(summary=summary, card="Pairs with the round's starting policy's summed log-probabilities (π_old).")
    finish_distributed()
    return ref


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
