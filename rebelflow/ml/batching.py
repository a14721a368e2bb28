"""Batching: dynamic right padding, the one pad-and-forward of every model stage, summed log-probabilities,
the seeded update plan and the slices a rank takes.

The logprobs stage and the trainer call the same `batch_logps`, with the same dtype, attention kernel
and right padding, so π_old and π_θ at step 0 agree.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import torch

from rebelflow.losses import masked_nll, preference_loss, rebel_loss, sequence_logps, token_logps


def pad_right(seqs: Iterable[list[int]], value: int) -> torch.Tensor:
    """(B, T) tensor, T = the longest sequence of this batch (never a fixed maximum)."""
    seqs = list(seqs)
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def right_padded(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids (B, T), attention mask (B, T)) of sequences right-padded to the batch's longest."""
    return pad_right(seqs, pad_id).to(device), pad_right(([1] * len(s) for s in seqs), 0).to(device)


def pad_and_forward(model, seqs: Iterable[list[int]], pad_id: int):
    """(the model's output, the padded input ids (B, T)) for a batch of token sequences, on the model's device."""
    ids, attention = right_padded(list(seqs), pad_id, next(model.parameters()).device)
    return model(input_ids=ids, attention_mask=attention), ids


def batch_logps(model, ids: list[list[int]], masks: list[list[int]], temperature: float, pad_id: int) -> torch.Tensor:
    """Summed log-probabilities (B,) of the masked tokens of each sequence, right-padded per batch."""
    out, input_ids = pad_and_forward(model, ids, pad_id)
    return sequence_logps(out.logits, input_ids, pad_right(masks, 0).to(input_ids.device), temperature)


def per_token(padded: torch.Tensor, masks: list[list[int]]) -> list[torch.Tensor]:
    """Each row's entries at its trained tokens, from a (B, T - 1) tensor of next-token positions (entry t
    is token t + 1's, as `losses.token_logps` lays them out)."""
    return [row[: len(m) - 1][torch.tensor(m[1:], dtype=torch.bool, device=row.device)]
            for row, m in zip(padded, masks, strict=True)]


def laid_out(values: list[list[float]], masks: list[list[int]], like: torch.Tensor) -> torch.Tensor:
    """The inverse of `per_token`: each row's per-token values placed at its trained tokens' positions in a
    zero (B, T - 1) tensor shaped like `like`."""
    out = torch.zeros_like(like, dtype=torch.float32)
    for i, (v, m) in enumerate(zip(values, masks, strict=True)):
        if v:
            out[i, : len(m) - 1][torch.tensor(m[1:], dtype=torch.bool, device=out.device)] = torch.tensor(
                v, dtype=out.dtype, device=out.device)
    return out


def batch_token_logps(model, ids: list[list[int]], masks: list[list[int]], temperature: float,
                      pad_id: int) -> list[torch.Tensor]:
    """Per sequence, the log-probabilities of its masked tokens in order (what `batch_logps` sums)."""
    out, input_ids = pad_and_forward(model, ids, pad_id)
    return per_token(token_logps(out.logits, input_ids, temperature), masks)


def pair_loss(model, rows: list[dict], eta: float, temperature: float, pad: int, objective: str = "rebel",
              beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss and metrics of a micro-batch of pairs (rows with chosen/rejected ids and masks, the
    reference's logprobs `*_logp_old` and the rewards), by objective: REBEL's regression onto η × the reward
    difference, DPO or IPO against the reference (β, label smoothing), or RAFT's supervised loss on the chosen
    (best) response alone. Chosen and rejected go through separate passes."""
    if objective == "raft":
        out, input_ids = pad_and_forward(model, [r["chosen_ids"] for r in rows], pad)
        loss = masked_nll(out.logits, input_ids, pad_right([r["chosen_mask"] for r in rows], 0).to(input_ids.device))
        return loss, {"loss": loss.item(), "tokens": sum(len(r["chosen_ids"]) for r in rows)}
    chosen = batch_logps(model, [r["chosen_ids"] for r in rows], [r["chosen_mask"] for r in rows], temperature, pad)
    rejected = batch_logps(model, [r["rejected_ids"] for r in rows], [r["rejected_mask"] for r in rows], temperature, pad)

    def column(key: str) -> torch.Tensor:
        return torch.tensor([r[key] for r in rows], dtype=chosen.dtype, device=chosen.device)

    if objective == "rebel":
        loss, metrics = rebel_loss(
            chosen, column("chosen_logp_old"), rejected, column("rejected_logp_old"),
            column("chosen_reward"), column("rejected_reward"), eta,
        )
    else:
        loss, metrics = preference_loss(chosen, column("chosen_logp_old"), rejected, column("rejected_logp_old"),
                                        objective, beta, label_smoothing)
    metrics["tokens"] = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    return loss, metrics


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def update_plan(n_items: int, per_update: int, epochs: int, seed: int) -> list[list[int]]:
    """Item indices of every update: a seeded shuffle per epoch, the incomplete last batch dropped."""
    plan = []
    for epoch in range(epochs):
        order = list(range(n_items))
        random.Random(seed + epoch).shuffle(order)
        plan += [order[i : i + per_update] for i in range(0, n_items - per_update + 1, per_update)]
    return plan


def split(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def rank_slice(items: list[Any], accelerator) -> list[Any]:
    """This rank's equal, contiguous share of an update's items."""
    share = len(items) // accelerator.num_processes
    return items[accelerator.process_index * share : (accelerator.process_index + 1) * share]


def means_over_rows(accelerator, rows: list[Any], micro: int, metrics_of, keys: tuple[str, ...]) -> dict[str, float]:
    """Row-weighted means of `keys` of metrics_of(chunk) over all rows (validation), the chunks shared out
    over the ranks. Every rank runs the same number of forward passes (ZeRO-3 needs all ranks in each
    one): ranks short of a chunk repeat one with weight 0."""
    if not rows:
        return {}
    chunks = split(rows, micro)
    ranks, me = accelerator.num_processes, accelerator.process_index
    mine = chunks[me::ranks]
    weights = [len(c) for c in mine]
    while len(mine) < -(-len(chunks) // ranks):
        mine.append(chunks[0])
        weights.append(0)
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=accelerator.device)
    for chunk, weight in zip(mine, weights, strict=True):
        m = metrics_of(chunk)
        sums += torch.tensor([m[k] * weight for k in keys] + [weight], dtype=torch.float64, device=accelerator.device)
    if ranks > 1:
        sums = accelerator.reduce(sums, "sum")
    return {k: (sums[i] / sums[-1]).item() for i, k in enumerate(keys)}
