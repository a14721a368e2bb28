"""reward_model_flow: train a Bradley-Terry reward model on preference pairs and score it the RewardBench
way (rm-train), or only score a reward model (rm-eval). Writes summary.json in the run's folder
(`<store>/campaigns/<name>/`) with the held-out accuracy and the section scores."""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its annotations,
# also in a served run's fresh process, where string annotations cannot be resolved.
import json
from typing import Any

from prefect import flow

from rebelflow.config.reward_model import RMConfig
from rebelflow.flows.common import Steps
from rebelflow.flows.progress import PROGRESS
from rebelflow.flows.ui import publish_reward_model
from rebelflow.planning.reward_model import rm_jobs
from rebelflow.store.local import Store, write_json_atomic


@flow(name="reward-model", flow_run_name="{cfg.name}-{mode}", log_prints=True)
def reward_model_flow(cfg: RMConfig, mode: str = "train") -> dict[str, Any]:
    """mode "train": preferences → rm_train → held-out and benchmark evaluation; "eval": evaluation only."""
    store = Store(cfg.store.root)
    jobs = rm_jobs(cfg, train=mode == "train", store=store)
    PROGRESS.start([(j.round, j.name) for j in jobs])
    step = Steps(cfg.name, store, tracking=cfg.tracking)
    for job in jobs:
        step(job)
    records = step.records
    refs = {job.name: job.ref for job in jobs}
    summary: dict[str, Any] = {"name": cfg.name, "mode": mode}
    if "rm_train" in refs:
        trained = store.manifest(refs["rm_train"])["summary"]
        summary |= {"reward_model": refs["rm_train"].id, "model_path": store.model_path(refs["rm_train"]),
                    "curve": trained["curve"]}
    if "heldout_eval" in refs:
        summary["heldout_accuracy"] = store.manifest(refs["heldout_eval"])["summary"]["accuracy"]
    if "rm_eval" in refs:
        bench = store.manifest(refs["rm_eval"])["summary"]
        summary |= {"weighting": bench["weighting"], "accuracy": bench["accuracy"], "overall": bench["overall"],
                    "sections": {row["section"]: row["score"] for row in bench["sections"]},
                    "unweighted_subsets": bench["unweighted subsets"], "evaluation": refs["rm_eval"].id}
    folder = store.root / "campaigns" / cfg.name
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "summary.json").is_file():  # rm-eval after rm-train keeps the training results
        summary = json.loads((folder / "summary.json").read_text()) | summary
    write_json_atomic(folder / "summary.json", summary)
    publish_reward_model(cfg.name, summary, store)
    return {"records": records, "summary": summary}
