"""Running one stage inside a flow: call its task, record it in the campaign index, publish its summary."""

from __future__ import annotations

import time
from typing import Any

from rebelflow.artifacts import Store
from rebelflow.stages import StageJob
from rebelflow.tasks import task_for
from rebelflow.tasks.ui import publish_stage


def run_stage(campaign: str, job: StageJob, store: Store) -> dict[str, Any]:
    """Run (or take from cache) one stage; returns a record for the summary table."""
    started = time.time()
    state = task_for(job, store)(job, str(store.root), return_state=True)
    if not state.is_completed():
        store.record(campaign, job.round, job.name, job.ref, state="failed")
        state.result()  # raises the stage's exception
    ref = state.result()
    seconds = time.time() - started
    store.record(campaign, job.round, job.name, ref)
    publish_stage(campaign, job.round, job.name, ref, store, seconds)
    status = "cached" if state.name == "Cached" else "ran"
    return {"round": job.round, "stage": job.name, "id": ref.id, "status": status, "seconds": round(seconds, 2)}
