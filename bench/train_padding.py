"""Training throughput: dynamic padding (each micro-batch padded to its own longest sequence, what the
train stage does) against padding every sequence to the configured maximum prompt + response length
(the fixed layout of the reference code), on the same pairs and the same model. Prints real (non-pad)
tokens per second of forward + backward for both and their ratio, measured in one run.

    .venv/bin/python bench/train_padding.py [--pairs 64] [--micro 8] [--max-prompt 256] [--max-response 512]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch
from measures import measure as record_measure

from rebelflow.config.campaign import TinyModelConfig
from rebelflow.losses import rebel_loss, sequence_logps
from rebelflow.ml.batching import pad_right
from rebelflow.ml.models import load_causal_lm
from rebelflow.ml.tiny import build_policy


def synthetic_pairs(n: int, max_prompt: int, max_response: int, vocab: int, seed: int = 0) -> list[dict]:
    """Chat-like lengths: prompts and responses spread over their range, most far below the maximum."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        p = rng.randint(16, max_prompt // 2)
        row = {}
        for side in ("chosen", "rejected"):
            r = min(max_response, int(rng.expovariate(1 / (max_response / 5))) + 8)
            row[f"{side}_ids"] = [rng.randrange(4, vocab) for _ in range(p + r)]
            row[f"{side}_mask"] = [0] * p + [1] * r
        pairs.append(row)
    return pairs


def step(model, micro: list[dict], width: int | None) -> None:
    logps = {}
    for side in ("chosen", "rejected"):
        seqs, masks = [r[f"{side}_ids"] for r in micro], [r[f"{side}_mask"] for r in micro]
        if width is not None:  # the fixed layout: one extra all-padding row sets the width
            seqs, masks = [*seqs, [0] * width], [*masks, [0] * width]
        ids, attention, mask = pad_right(seqs, 0), pad_right(([1] * len(s) for s in seqs), 0), pad_right(masks, 0)
        if width is not None:
            ids, attention, mask = ids[:-1], attention[:-1], mask[:-1]
        logps[side] = sequence_logps(model(input_ids=ids, attention_mask=attention).logits, ids, mask)
    zeros = torch.zeros(len(micro))
    loss, _ = rebel_loss(logps["chosen"], zeros, logps["rejected"], zeros, zeros + 1, zeros, 1.0)
    loss.backward()


def measure(model, pairs: list[dict], micro: int, width: int | None) -> float:
    tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in pairs)
    step(model, pairs[:micro], width)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pairs), micro):
        step(model, pairs[i : i + micro], width)
    model.zero_grad()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--max-prompt", type=int, default=256)
    parser.add_argument("--max-response", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = build_policy(tempfile.mkdtemp(), TinyModelConfig(hidden_size=128, layers=4, heads=4, max_positions=1024))
    model = load_causal_lm(str(folder), "float32")
    pairs = synthetic_pairs(args.pairs, args.max_prompt, args.max_response, model.config.vocab_size)
    width = args.max_prompt + args.max_response
    real = sum(len(r["chosen_ids"]) for r in pairs) / len(pairs)
    dynamic = measure(model, pairs, args.micro, None)
    fixed = measure(model, pairs, args.micro, width)
    print(f"{args.pairs} pairs, micro-batches of {args.micro}, mean sequence {real:.0f} tokens, fixed layout {width}")
    print(f"dynamic padding: {dynamic:,.0f} real tokens/s")
    print(f"fixed padding:   {fixed:,.0f} real tokens/s")
    print(f"ratio dynamic/fixed: {dynamic / fixed:.2f}x")
    record_measure("train_padding", "dynamic / fixed padding, real tokens/s", dynamic / fixed, "x", at_least=1.5)


if __name__ == "__main__":
    main()
