"""Online rounds: iterations per minute of the resident loop (one round of N iterations: the policy, its
reference and the reward loaded once) against the same N iterations as N offline (iterative) rounds of one
iteration's size each — 32 prompts, 2 samples, 4 passes; generate, score, prepare, logprobs and train as
separate stages, every model loaded again — and as N online rounds of one iteration each, on the CPU demo's
task. All runs go through `rebelflow run` with round 0 (tiny model, SFT) already in the store; a fully cached
run's time (the command's fixed cost: start-up, the temporary Prefect server) is subtracted.

    .venv/bin/python bench/online_loop.py [--iterations 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measures import measure

REPO = Path(__file__).resolve().parents[1]


def run(store: str, *overrides: str) -> float:
    cmd = [sys.executable, "-m", "rebelflow.cli", "run", str(REPO / "configs/demo-online.yaml"), "--store", store,
           "--set", "stop_after=train"]
    for item in overrides:
        cmd += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    n = parser.parse_args().iterations
    store = tempfile.mkdtemp(prefix="bench-online-")
    run(store, "rounds=1", "online.iterations=1")  # round 0 into the store (and one tiny round)
    fixed = run(store, "rounds=1", "online.iterations=1")  # everything cached: the command's fixed cost
    resident = run(store, "rounds=1", f"online.iterations={n}") - fixed
    per_round = run(store, f"rounds={n}", "online.iterations=1") - fixed
    offline = run(store, "online=null", f"rounds={n}", "prompts.per_round=32", "prompts.selection=same", "generate.n=2",
                  "prepare.validation_pairs=0", "train.epochs=4", "train.pairs_per_update=8",
                  "train.micro_batch_pairs=8", "logprobs.batch_pairs=64") - fixed
    print(f"{n} iterations of 32 prompts x 2 samples, 4 passes (tiny Llama, rule reward, 2-core CPU); fixed cost "
          f"{fixed:.1f}s subtracted")
    for what, seconds in ((f"resident loop (1 online round of {n})", resident),
                          (f"{n} online rounds of one iteration", per_round),
                          (f"{n} offline rounds of one iteration's size", offline)):
        print(f"{what:44s} {seconds:6.1f}s  {60 * n / seconds:6.1f} iterations/minute")
    print(f"resident / offline rounds: {offline / resident:.1f}x, resident / one-iteration online rounds: "
          f"{per_round / resident:.1f}x iterations per minute")
    measure("online_loop", "resident loop / offline rounds, iterations/min", offline / resident, "x", at_least=5)
    measure("online_loop", "resident loop / one-iteration online rounds", per_round / resident, "x", at_least=2)


if __name__ == "__main__":
    main()
