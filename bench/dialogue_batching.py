"""Multi-turn generation: dialogues per second with turn-batched generation (every pending reply of all
dialogues in one engine call per turn, what generate_dialogues does) against one dialogue at a time,
same tiny model, same settings. Prints both rates and their ratio, measured in one run.

    .venv/bin/python bench/dialogue_batching.py [--dialogues 64] [--turns 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from measures import measure

from rebelflow.config.campaign import TinyModelConfig, UserConfig
from rebelflow.engines.hf import HFEngine
from rebelflow.ml.tiny import build_policy
from rebelflow.stages import generate_dialogues
from rebelflow.users import load_user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=64)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    engine = HFEngine(str(build_policy(tempfile.mkdtemp(), TinyModelConfig(hidden_size=128, layers=4))))
    user_cfg = UserConfig(kind="scripted", function="rebelflow.users.examples:addition_quiz")
    settings = generate_dialogues.Settings(
        engine="hf", temperature=1.0, top_p=1.0, max_new_tokens=16, seed=0, batch_size=args.dialogues,
        shard_size=args.dialogues, dtype="float32", turns=args.turns, horizon="uniform", branch="uniform",
        dialogue_seed=0, branching=True, user=user_cfg, user_identity="bench",
    )
    rows = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"What is {i % 10} + {i % 7}?"}],
             "user_turns": []} for i in range(args.dialogues)]
    user = load_user(user_cfg)
    generate_dialogues.rollout(settings, rows[:2], engine, user)  # warm-up
    start = time.perf_counter()
    generate_dialogues.rollout(settings, rows, engine, user)
    batched = args.dialogues / (time.perf_counter() - start)
    start = time.perf_counter()
    for row in rows:
        generate_dialogues.rollout(settings, [row], engine, user)
    single = args.dialogues / (time.perf_counter() - start)
    print(f"{args.dialogues} prompts, {args.turns} turns, rollout 1 + its branch, up to 16 new tokens per reply")
    print(f"turn-batched:        {batched:.1f} dialogues/s")
    print(f"one at a time:       {single:.1f} dialogues/s")
    print(f"ratio batched/single: {batched / single:.1f}x")
    measure("dialogue_batching", "turn-batched / one dialogue at a time", batched / single, "x", at_least=2)


if __name__ == "__main__":
    main()
