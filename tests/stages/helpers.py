from rebelflow.artifacts import Store, external_model
from rebelflow.launch import launch
from rebelflow.plan import round_jobs


def run_round(cfg, policy_path: str, upto: str = "prepare"):
    """Run round 1's stages in process up to `upto`; returns (store, {stage: ref}, policy ref)."""
    store, refs = Store(cfg.store.root), {}
    policy = external_model(policy_path)
    for job in round_jobs(cfg, 1, policy):
        refs[job.stage] = launch(job, store)
        if job.stage == upto:
            break
    return store, refs, policy
