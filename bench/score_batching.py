"""Scoring: responses per second with the classifier backend (chat-templated, batched, sorted by length so
each batch pads to its own longest sequence, attention masks) against one response at a time (the
reference scripts' way), same tiny classifier, same items. Prints both rates, their ratio and the largest
difference between the two ways' scores, measured in one run.

    .venv/bin/python bench/score_batching.py [--items 512] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from measures import measure

from rebelflow.config.campaign import RewardConfig, TinyModelConfig
from rebelflow.ml.tiny import build_classifier
from rebelflow.rewards import load_reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model = build_classifier(tempfile.mkdtemp(), TinyModelConfig(hidden_size=128, layers=4))
    rng = random.Random(0)
    words = "the cat sat on a warm mat and looked at rain falling over quiet hills".split()
    items = [([{"role": "user", "content": f"Tell me something, please ({i})."}],
              " ".join(rng.choice(words) for _ in range(rng.randint(5, 200)))) for i in range(args.items)]
    batched = load_reward(RewardConfig(backend="classifier", model=str(model), batch_size=args.batch_size))
    single = load_reward(RewardConfig(backend="classifier", model=str(model), batch_size=1))
    batched.score(items[:8])
    start = time.perf_counter()
    fast = batched.score(items)
    batched_rate = len(items) / (time.perf_counter() - start)
    start = time.perf_counter()
    slow = single.score(items)
    single_rate = len(items) / (time.perf_counter() - start)
    diff = max(abs(a.value - b.value) for a, b in zip(fast, slow, strict=True))
    print(f"{len(items)} responses of 5-200 words, tiny classifier (hidden 128, 4 layers), CPU")
    print(f"batched ({args.batch_size}, length-sorted): {batched_rate:.1f} responses/s")
    print(f"one at a time:             {single_rate:.1f} responses/s")
    print(f"ratio batched/single: {batched_rate / single_rate:.1f}x   largest score difference: {diff:.2e}")
    measure("score_batching", "batched / one at a time, responses/s", batched_rate / single_rate, "x")
    measure("score_batching", "largest score difference, batched vs single", diff, "", at_most=1e-5)


if __name__ == "__main__":
    main()
