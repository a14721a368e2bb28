"""The benchmarks' headline measures, gathered into the one table `make bench` prints.

A benchmark calls `measure(...)` for each number it stands behind; with $REBELFLOW_BENCH_RESULTS set (as
`make bench` sets it) the measure is appended there as a JSON line. `python bench/measures.py FILE` prints
them as a table: measure, value on this machine, target, and whether the value meets it.
"""

from __future__ import annotations

import json
import os
import platform
import sys


def measure(bench: str, name: str, value: float, unit: str, at_least: float | None = None,
            at_most: float | None = None) -> None:
    """Record one measure (a target of at_least/at_most, or none: reported for reference)."""
    path = os.environ.get("REBELFLOW_BENCH_RESULTS")
    if not path:
        return
    with open(path, "a") as fh:
        fh.write(json.dumps({"bench": bench, "name": name, "value": value, "unit": unit, "at_least": at_least,
                             "at_most": at_most}) + "\n")


def _number(value: float, unit: str) -> str:
    if unit == "%":
        return f"{100 * value:.0f} %"
    return f"{value:.3g}{'' if unit == 'x' else ' '}{'×' if unit == 'x' else unit}"


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def table(path: str) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    out = [f"make bench on {cpu_name()} · {os.cpu_count()} CPUs · {platform.system()}",
           f"{'benchmark':<20} {'measure':<52} {'value':>10}  {'target':<10} met"]
    for r in rows:
        if r["at_least"] is not None:
            target, met = f">= {_number(r['at_least'], r['unit'])}", r["value"] >= r["at_least"]
        elif r["at_most"] is not None:
            target, met = f"<= {_number(r['at_most'], r['unit'])}", r["value"] <= r["at_most"]
        else:
            target, met = "-", None
        flag = {True: "yes", False: "NO", None: ""}[met]
        out.append(f"{r['bench']:<20} {r['name']:<52} {_number(r['value'], r['unit']):>10}  {target:<10} {flag}")
    return "\n".join(out)


if __name__ == "__main__":
    print(table(sys.argv[1]))
