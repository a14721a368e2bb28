"""Running one stage inside a flow: call its task, record it in the campaign index, publish its summary.
`Steps` runs a flow's steps in order and keeps one record per step for the summary table."""

from __future__ import annotations

import time
from typing import Any

from rebelflow.config.campaign import HubConfig, TrackingConfig
from rebelflow.flows.progress import PROGRESS
from rebelflow.flows.ui import publish_stage
from rebelflow.ml.tracking import Tracker, run_info
from rebelflow.planning.jobs import StageJob
from rebelflow.store.hub import fetch, pinned_commit, publish, record_in_index
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef
from rebelflow.store.resources import recorded_peak
from rebelflow.tasks import task_for


class Steps:
    """Calls `run_stage` for each step of a flow (a None step, past `stop_after`, is skipped) and keeps
    the records; a call returns the step's artifact reference."""

    def __init__(self, campaign: str, store: Store, hub: HubConfig | None = None,
                 tracking: TrackingConfig | None = None):
        self.campaign, self.store, self.hub, self.tracking = campaign, store, hub, tracking
        self.records: list[dict[str, Any]] = []

    def __call__(self, job: StageJob | None) -> ArtifactRef | None:
        if job is None:
            return None
        self.records.append(run_stage(self.campaign, job, self.store, self.hub, self.tracking))
        return job.ref


def run_stage(campaign: str, job: StageJob, store: Store, hub: HubConfig | None = None,
              tracking: TrackingConfig | None = None) -> dict[str, Any]:
    """Run (or take from cache) one stage; returns a record for the summary table. With `hub`, a stage
    missing from the store is first looked for on the Hub, and a finished one is uploaded there; with
    `tracking`, a stage that ran logs its summary as a wandb run (training stages log every update
    themselves)."""
    started = time.time()
    if hub is not None and not store.is_complete(job.ref, quarantine=True):
        fetch_missing(hub, store, campaign, job)
    found = store.is_complete(job.ref, quarantine=True)  # damaged artifacts are moved aside and made again
    if not found:
        PROGRESS.begin(job.round, job.name)
    state = task_for(job, missing=not found)(job, str(store.root), return_state=True)
    if not state.is_completed():
        store.record(campaign, job.round, job.name, job.ref, state="failed")
        PROGRESS.failed(job.round, job.name, time.time() - started)
        state.result()  # raises the stage's exception
    ref = state.result()
    seconds = time.time() - started
    store.record(campaign, job.round, job.name, ref)
    if hub is not None:
        record_in_index(store, campaign, job.round, job.name, publish(hub, store, campaign, job.round, job.name, ref))
    publish_stage(campaign, job.round, job.name, ref, store, seconds)
    status = "cached" if found or state.name == "Cached" else "ran"
    PROGRESS.end(job.round, job.name, status, seconds)
    if tracking is not None and status == "ran" and job.stage not in TRAINING_STAGES:
        name = f"{campaign}-r{job.round}-{job.name}"
        tracker = Tracker(run_info(tracking, str(store.root), campaign, name, job.name), {"round": job.round})
        tracker.log(numbers(store.manifest(ref).get("summary", {})) | {"round": job.round})
        tracker.finish(store.manifest(ref).get("summary", {}))
    return {"round": job.round, "stage": job.name, "id": ref.id, "status": status, "seconds": round(seconds, 2),
            "peak_mib": recorded_peak(store.manifest(ref))}


TRAINING_STAGES = ("train", "sft", "rm_train")


def numbers(summary: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a stage summary: numbers; a list of numbers (per-turn win rates) as key_1,
    key_2, …; a list of (name, number) rows (section scores) as key/name."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) or v is None for v in value):
            out |= {f"{key}_{i}": v for i, v in enumerate(value, start=1) if v is not None}
        elif isinstance(value, list) and all(isinstance(v, dict) and len(v) == 2 for v in value):
            for row in value:  # e.g. sections: [{section: Chat, score: 0.9}] -> sections/Chat
                label = next((v for v in row.values() if isinstance(v, str)), None)
                number = next((v for v in row.values() if isinstance(v, (int, float))), None)
                if label is not None and number is not None:
                    out[f"{key}/{label}"] = number
    return out


def fetch_missing(hub: HubConfig, store: Store, campaign: str, job: StageJob) -> None:
    """Download the stage's artifact at its pinned commit if the Hub has it; if the Hub cannot be reached
    the stage is made again here, as without a Hub."""
    try:
        fetch(hub, store, campaign, job.round, job.ref, pinned_commit(store, campaign, job.round, job.name))
    except Exception as exc:  # the local run must not depend on the network
        print(f"hub: could not fetch {job.ref.id} ({type(exc).__name__}: {str(exc)[:200]}); making it here")

