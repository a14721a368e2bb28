from rebelflow.planning.campaign import Baseline, baseline, round_plan
from rebelflow.running.launch import launch
from rebelflow.store.local import Store
from rebelflow.store.refs import external_model


def run_round(cfg, policy_path: str, upto: str = "prepare"):
    """Run round 1's stages in process up to `upto` (a job name); returns (store, {name: ref}, policy ref).
    Evaluation jobs need the baseline's samples: those run first when `upto` is past training."""
    store, refs = Store(cfg.store.root), {}
    policy = external_model(policy_path)
    base = Baseline()
    evaluating = upto in ("eval_generate", "eval_score", "evaluate")
    cfg = cfg.model_copy(update={"stop_after": "evaluate" if evaluating else upto})
    if evaluating:
        base = baseline(cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"model": policy_path})}))
        for job in base.jobs:
            refs[f"baseline_{job.name}"] = launch(job, store)
    for job in round_plan(cfg, 1, policy, base).jobs():
        refs[job.name] = launch(job, store)
        if job.name == upto:
            break
    return store, refs, policy
