"""Memory across rounds: the demo campaign run for 1 round, then for 6 rounds in the same store (round 1
cached, rounds 2-6 made), each by `rebelflow run` in its own process. Samples the resident memory of the
run's whole process tree (the flow's process and its stage processes) every 0.1 s and reads each stage's
peak from its manifest (`resources.peak_rss_mib`). Target: the 6-round run peaks where the 1-round run
does (within 10 %): nothing piles up from round to round.

    .venv/bin/python bench/memory_rounds.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from measures import measure

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/demo-rebel.yaml")


def tree_rss(proc: psutil.Process) -> tuple[float, float]:
    """(the process's own RSS, its tree's) in MiB; 0 for a process that just ended."""
    try:
        own = proc.memory_info().rss
        rest = 0
        for child in proc.children(recursive=True):
            try:
                rest += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return own / 2**20, (own + rest) / 2**20
    except psutil.NoSuchProcess:
        return 0.0, 0.0


def run(rounds: int, store: str, env: dict) -> tuple[float, float]:
    """Peak MiB of `rebelflow run` with `rounds` rounds: (the flow's process, the whole tree)."""
    cmd = [sys.executable, "-m", "rebelflow.cli", "run", CONFIG, "--store", store, "--set", f"rounds={rounds}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched, own_peak, tree_peak = psutil.Process(proc.pid), 0.0, 0.0
    while proc.poll() is None:
        own, tree = tree_rss(watched)
        own_peak, tree_peak = max(own_peak, own), max(tree_peak, tree)
        time.sleep(0.1)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    return own_peak, tree_peak


def stage_peaks(store: str, campaign: str) -> dict[int, float]:
    """Per round, the largest stage peak its manifests record."""
    index = json.loads((Path(store) / "campaigns" / campaign / "index.json").read_text())
    out = {}
    for k, stages in index["rounds"].items():
        peaks = []
        for entry in stages.values():
            manifest = Path(store) / "artifacts" / entry["id"] / "manifest.json"
            if manifest.is_file():
                peaks.append(json.loads(manifest.read_text()).get("resources", {}).get("peak_rss_mib", 0))
        out[int(k)] = max(peaks, default=0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="rebelflow-bench-mem-")
    env = {**os.environ, "PREFECT_HOME": f"{tmp}/prefect", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    store = f"{tmp}/store"
    one = run(1, store, env)
    many = run(args.rounds, store, env)
    print(f"demo campaign, 1 round: flow process peak {one[0]:.0f} MiB, process tree {one[1]:.0f} MiB")
    print(f"demo campaign, {args.rounds} rounds: flow process peak {many[0]:.0f} MiB, process tree {many[1]:.0f} MiB")
    peaks = stage_peaks(store, "demo-rebel")  # more rounds is the same campaign (not a variant), one index
    print("largest stage peak per round (manifests): " + ", ".join(f"r{k} {v:.0f}" for k, v in sorted(peaks.items())))
    measure("memory_rounds", f"flow process peak, {args.rounds} rounds / 1 round", many[0] / one[0], "x", at_most=1.1)
    measure("memory_rounds", f"process tree peak, {args.rounds} rounds / 1 round", many[1] / one[1], "x", at_most=1.1)
    later = [v for k, v in peaks.items() if k >= 2]
    measure("memory_rounds", f"largest stage peak, rounds 2-{args.rounds} / round 1", max(later) / peaks[1], "x",
            at_most=1.1)


if __name__ == "__main__":
    main()
