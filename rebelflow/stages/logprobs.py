"""logprobs: the round's starting policy's summed log-probabilities of every pair's chosen and rejected
reply (π_old in the REBEL loss), computed once per round by the trainer's own forward function.

Consumes a prepare artifact and the policy; produces the same rows (train and validation splits) plus
`chosen_logp_old` and `rejected_logp_old`. Pairs are sorted by length and batched with padding to the
longest sequence of each batch; results go back in row order. The fingerprint includes the hardware
fingerprint (torch, device, dtype, attention kernel): another machine recomputes instead of reusing.

Run alone: python -m rebelflow.stages.logprobs configs/demo-rebel.yaml --round 1
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from rebelflow import stages
from rebelflow.artifacts import ArtifactRef, Store
from rebelflow.config import LogprobsConfig
from rebelflow.stages.prepare import SCHEMA as PREPARE_SCHEMA
from rebelflow.training import batch_logps, load_causal_lm, pad_id_of

NAME, VERSION, KIND = "logprobs", 1, "dataset"
SCHEMA = PREPARE_SCHEMA.append(pa.field("chosen_logp_old", pa.float64())).append(
    pa.field("rejected_logp_old", pa.float64())
)


class Settings(LogprobsConfig):
    UNHASHED: ClassVar[set[str]] = {"launcher"}

    temperature: float  # the sampling temperature: logits are divided by it, as when sampling
    hardware: str


@torch.no_grad()
def compute(model, tokenizer, rows: list[dict], settings: Settings) -> None:
    """Add chosen_logp_old / rejected_logp_old to every row, in place."""
    order = sorted(range(len(rows)), key=lambda i: max(len(rows[i]["chosen_ids"]), len(rows[i]["rejected_ids"])))
    pad = pad_id_of(tokenizer)
    for start in tqdm(range(0, len(order), settings.batch_pairs), desc="logprobs", unit="batch"):
        batch = [rows[i] for i in order[start : start + settings.batch_pairs]]
        for side in ("chosen", "rejected"):
            values = batch_logps(
                model, [r[f"{side}_ids"] for r in batch], [r[f"{side}_mask"] for r in batch], settings.temperature, pad
            )
            for row, value in zip(batch, values.tolist(), strict=True):
                row[f"{side}_logp_old"] = value


def run(settings: Settings, pairs: ArtifactRef, policy: ArtifactRef, *, store: Store) -> ArtifactRef:
    from transformers import AutoTokenizer

    ref = stages.artifact_ref(NAME, VERSION, KIND, settings, [pairs, policy])
    if store.is_complete(ref, quarantine=True):
        return ref
    path = store.model_path(policy)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=policy.revision)
    model = load_causal_lm(path, settings.dtype, settings.attn_implementation, policy.revision)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    with store.writer(ref, VERSION, stages.hashed_settings(settings), [pairs, policy]) as w:
        summary = {"hardware": settings.hardware}
        for split in store.manifest(pairs)["splits"]:
            rows = store.read_rows(pairs, split)
            compute(model, tokenizer, rows, settings)
            w.write_shard(split, 0, rows, SCHEMA)
            summary[f"{split} pairs"] = len(rows)
            summary[f"{split} mean chosen logp"] = round(sum(r["chosen_logp_old"] for r in rows) / len(rows), 4)
            summary[f"{split} mean rejected logp"] = round(sum(r["rejected_logp_old"] for r in rows) / len(rows), 4)
        w.finish(summary=summary, card="Pairs with the round's starting policy's summed log-probabilities (π_old).")
    return ref


if __name__ == "__main__":
    raise SystemExit(stages.main(NAME))
