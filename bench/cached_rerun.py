"""A fully cached re-run of the demo campaign: wall time of `rebelflow run` when every stage is in the
store, and the share of it spent outside stage work (interpreter and library start-up, Prefect's
embedded server, flow and task bookkeeping). Runs the demo once to fill a fresh store (not timed here),
then times the cached re-run, in one process each, like a user would.

    .venv/bin/python bench/cached_rerun.py [--config configs/demo-rebel.yaml]
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

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, store: str, env: dict) -> tuple[float, list[dict]]:
    """Wall seconds of one `rebelflow run`, and its stage records (from a JSON dump of the flow result)."""
    out = Path(store) / "records.json"
    code = (
        "import json, sys; from rebelflow.config.loading import load_config; "
        "from rebelflow.flows.campaign import campaign_flow; "
        f"r = campaign_flow(load_config({config!r}, store={store!r})); "
        f"open({str(out)!r}, 'w').write(json.dumps(r['records']))"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start, json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/demo-rebel.yaml"))
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="rebelflow-bench-")
    env = {**os.environ, "PREFECT_HOME": f"{tmp}/prefect", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    store = f"{tmp}/store"
    cold, _ = run(args.config, store, env)
    wall, records = run(args.config, store, env)
    statuses = {r["status"] for r in records}
    in_stages = sum(r["seconds"] for r in records)
    print(f"first run (fills the store): {cold:.1f} s")
    print(f"cached re-run: {wall:.1f} s wall, {len(records)} stages, all {'/'.join(sorted(statuses))}")
    print(f"time inside stage tasks: {in_stages:.2f} s; outside stage work: {wall - in_stages:.1f} s "
          f"({(wall - in_stages) / wall:.0%} of the wall time)")
    print(f"ratio cached/first run: {wall / cold:.2f}")


if __name__ == "__main__":
    main()
