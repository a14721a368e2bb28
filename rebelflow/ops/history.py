"""Run history read from Prefect's API: campaign and round flow runs with their stage task runs."""

from __future__ import annotations

import re
from typing import Any


def read_history(limit: int = 20) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        flows = client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=["campaign", "round"])))
        names = {f.id: f.name for f in flows}
        if not names:
            return []
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(id={"any_": list(names)}), sort=FlowRunSort.START_TIME_DESC, limit=limit
        )
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])))
    by_run: dict[Any, list] = {}
    for t in sorted(tasks, key=lambda t: t.expected_start_time or t.created):
        if not re.search(r"-r\d+$", t.name):  # Prefect's placeholder task runs for subflows
            continue
        by_run.setdefault(t.flow_run_id, []).append(
            {"name": t.name, "state": t.state_name, "seconds": _seconds(t)}
        )
    out = [
        {
            "id": str(r.id),
            "name": r.name,
            "flow": names.get(r.flow_id, "?"),
            "state": r.state_name,
            "start": r.start_time,
            "seconds": _seconds(r),
            "tasks": by_run.get(r.id, []),
            "overrides": _overrides((r.parameters or {}).get("cfg")),
        }
        for r in runs
    ]
    for row, r in zip(out, runs, strict=True):
        _online_curves(row["tasks"], (r.parameters or {}).get("cfg"))
    return out


def _overrides(cfg: dict | None) -> list[str]:
    """The --set items that made the run a variant of its campaign (none for the campaign itself)."""
    variant = cfg.get("variant") if isinstance(cfg, dict) else None
    return list(variant.get("overrides", [])) if isinstance(variant, dict) else []


def _online_curves(tasks: list[dict], cfg: dict | None) -> None:
    """Give each finished online round's task its per-iteration curves, first → last, read from the store
    the run wrote to (nothing when that store is gone or elsewhere)."""
    from rebelflow.planning.campaign import curve_text
    from rebelflow.store.local import Store

    if not isinstance(cfg, dict) or not cfg.get("online") or "store" not in cfg:
        return
    store = Store(cfg["store"]["root"])
    index = store.campaign_index(cfg["campaign"]) or {"rounds": {}}
    for t in tasks:
        found = re.search(r"online-r(\d+)$", t["name"])
        entry = index["rounds"].get(found.group(1), {}).get("online") if found else None
        if entry is None:
            continue
        try:
            summary = store.manifest(store.find(entry["id"]))["summary"]
        except (KeyError, OSError, ValueError):
            continue
        if summary.get("curve"):
            t["curve"] = curve_text(summary)


def _seconds(run: Any) -> float | None:
    if run.start_time and run.end_time:
        return round((run.end_time - run.start_time).total_seconds(), 2)
    return run.total_run_time.total_seconds() if run.total_run_time else None
