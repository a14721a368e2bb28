"""mt_bench_flow: a policy's MT-Bench answers and grades (`rebelflow mt-bench`), resumable like a campaign;
the figures go to `<store>/campaigns/mt-bench-<policy>/summary.json` and the UI."""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its annotations.
from typing import Any

from prefect import flow

from rebelflow.config.mt_bench import MTBenchConfig
from rebelflow.flows.common import Steps
from rebelflow.flows.ui import publish_mt_bench
from rebelflow.planning.evaluation import mt_bench_jobs, policy_ref
from rebelflow.store.local import Store, write_json_atomic


@flow(name="mt-bench", flow_run_name="mt-bench-{cfg.policy}", log_prints=True)
def mt_bench_flow(cfg: MTBenchConfig) -> dict[str, Any]:
    store = Store(cfg.store.root)
    policy = policy_ref(store, cfg.policy)
    name = f"mt-bench-{policy.id}"
    step = Steps(name, store)
    jobs = mt_bench_jobs(cfg, policy)
    for job in jobs:
        step(job)
    graded = store.manifest(jobs[-1].ref)["summary"]
    summary = {"name": name, "policy": policy.id, "policy_source": policy.source, "answers": jobs[0].ref.id,
               "grades": jobs[-1].ref.id, **graded}
    folder = store.root / "campaigns" / name
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "summary.json", summary)
    publish_mt_bench(name, summary)
    return {"records": step.records, "summary": summary}
