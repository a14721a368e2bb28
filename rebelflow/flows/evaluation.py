"""The evaluation flows, resumable like a campaign: mt_bench_flow (`rebelflow mt-bench`, a policy's MT-Bench
answers and grades) and alpaca_eval_flow (`rebelflow alpaca-eval`, a policy against reference outputs). The
figures go to `<store>/campaigns/<mt-bench|alpaca-eval>-<policy>-<hash>/summary.json` and the UI."""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its annotations.
from typing import Any

from prefect import flow

from rebelflow.config.evaluation import AlpacaEvalConfig, MTBenchConfig
from rebelflow.flows.common import Steps
from rebelflow.flows.progress import PROGRESS
from rebelflow.flows.ui import publish_alpaca_eval, publish_mt_bench
from rebelflow.planning.evaluation import alpaca_eval_jobs, mt_bench_jobs, policy_ref
from rebelflow.store.local import Store, write_json_atomic


@flow(name="mt-bench", flow_run_name="mt-bench-{cfg.policy}", log_prints=True)
def mt_bench_flow(cfg: MTBenchConfig) -> dict[str, Any]:
    return _run("mt-bench", cfg, mt_bench_jobs, publish_mt_bench)


@flow(name="alpaca-eval", flow_run_name="alpaca-eval-{cfg.policy}", log_prints=True)
def alpaca_eval_flow(cfg: AlpacaEvalConfig) -> dict[str, Any]:
    return _run("alpaca-eval", cfg, alpaca_eval_jobs, publish_alpaca_eval)


def _run(kind: str, cfg, jobs_of, publish) -> dict[str, Any]:
    """The evaluation's steps for the policy, then its summary (summary.json and the UI page)."""
    store = Store(cfg.store.root)
    policy = policy_ref(store, cfg.policy)
    jobs = jobs_of(cfg, policy)
    name = run_name(kind, policy, jobs)
    step = Steps(name, store)
    for job in jobs:
        step(job)
    summary = _summary(store, name, policy, jobs)
    publish(name, summary)
    return {"records": step.records, "summary": summary}


def run_name(kind: str, policy, jobs) -> str:
    """`<kind>-<policy id>-<last step's hash>`: another grader, reference or size is another run (its own
    summary); progress lines start counting this run's steps."""
    PROGRESS.start([(j.round, j.name) for j in jobs])
    return f"{kind}-{policy.id}-{jobs[-1].ref.id.rsplit('-', 1)[-1][:8]}"


def _summary(store: Store, name: str, policy, jobs) -> dict[str, Any]:
    """The last step's summary with what it evaluated, written to the run's summary.json."""
    summary = {"name": name, "policy": policy.id, "policy_source": policy.source, "answers": jobs[0].ref.id,
               "grades": jobs[-1].ref.id, **store.manifest(jobs[-1].ref)["summary"]}
    folder = store.root / "campaigns" / name
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "summary.json", summary)
    return summary
