"""A fully cached re-run of the demo campaign, as a user runs it (`rebelflow run`, one process each): the
first run fills a fresh store; then the same command again (every stage in the store and the summary made
from them: nothing to do, Prefect not started), and again with --record (through Prefect's embedded
server, a flow run of cached stages recorded). Prints the wall time of each; target: the re-run in 5 s.

    .venv/bin/python bench/cached_rerun.py [--config configs/demo-rebel.yaml]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measures import measure

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, store: str, env: dict, *extra: str) -> tuple[float, str]:
    """Wall seconds of one `rebelflow run`, and what it printed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rebelflow.cli", "run", config, "--store", store, *extra], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"rebelflow run failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/demo-rebel.yaml"))
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="rebelflow-bench-")
    env = {**os.environ, "PREFECT_HOME": f"{tmp}/prefect", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "COLUMNS": "160"}
    store = f"{tmp}/store"
    cold, _ = run(args.config, store, env)
    again, shown = run(args.config, store, env)
    if "Up to date" not in shown:
        sys.exit(f"the re-run was not up to date:\n{shown[-3000:]}")
    recorded, shown = run(args.config, store, env, "--record")
    stages = sum(" cached " in line for line in shown.splitlines())
    print(f"first run (fills the store): {cold:.1f} s")
    print(f"re-run, nothing to do (Prefect not started): {again:.1f} s")
    print(f"re-run through Prefect's embedded server (--record; {stages} stages cached): {recorded:.1f} s")
    measure("cached_rerun", "demo re-run with every stage cached (s)", again, "s", at_most=5)
    measure("cached_rerun", "the same through Prefect, --record (s)", recorded, "s")
    measure("cached_rerun", "first run of the demo (s)", cold, "s")


if __name__ == "__main__":
    main()
