"""The command line every stage module shares: `python -m rebelflow.stages.<name> CONFIG [--round K]
[--step NAME]` runs one stage of a campaign (or reward-model) config alone, its inputs already in the
store; `--job FILE` runs a job file the launcher wrote. A user error prints one `rebelflow-error:` line
(the launcher turns it back into the same error class) and exits 3.

The job is picked from the same plan `rebelflow plan` shows, by exact step name and round: the generate
module runs the `generate` step of round K (1 by default), never the baseline's `eval_generate` of round
0; `--step eval_generate --round 0` picks that one. Round-0 steps (tiny_model, sft, reward-model stages)
default to round 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback

from rebelflow.config.errors import DataError, RebelflowError, is_transient
from rebelflow.planning.jobs import StageJob
from rebelflow.stages import stage_module
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef

ERROR_PREFIX = "rebelflow-error:"
RM_STAGES = ("preferences", "rm_train", "rm_eval")  # read a reward-model config (config.reward_model.RMConfig)


def run_job(job: StageJob, store: Store) -> ArtifactRef:
    module = stage_module(job.stage)
    settings = module.Settings.model_validate(job.settings)
    # One maker per artifact; a waiting process then finds it complete. Under a multi-process launch
    # only rank 0 takes the lock (the other ranks of the same job must not wait for it).
    lock = store.lock(job.ref.id) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    with lock:
        ref = module.run(settings, *job.inputs, store=store)
    if ref != job.ref:
        raise RuntimeError(f"stage {job.stage} produced {ref.id}, the plan expected {job.ref.id} (a bug)")
    return ref


def main(name: str, argv: list[str] | None = None) -> int:
    """Command-line entry of every stage module."""
    parser = argparse.ArgumentParser(
        prog=f"python -m rebelflow.stages.{name}",
        description=f"Run the {name} stage alone. Its inputs must already be in the store.",
    )
    parser.add_argument("config", nargs="?", help="campaign YAML (not needed with --job)")
    parser.add_argument("--round", type=int, default=None, help="round index k (default 1; 0 for round-0 stages)")
    parser.add_argument("--step", help=f"the plan's step name (default {default_step(name)}; e.g. eval_generate)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--store", help="artifact store root (default: the config's store.root)")
    parser.add_argument("--job", help="a job file written by the launcher")
    args = parser.parse_args(argv)
    try:
        if args.job:
            job = StageJob.model_validate_json(open(args.job).read())
            store = Store(args.store or ".")
        else:
            job, store = job_from_config(name, args)
        ref = run_job(job, store)
    except RebelflowError as exc:
        print(f"{ERROR_PREFIX} {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 3
    except Exception as exc:  # classified here, once, so a subprocess fails as the same error in process would
        traceback.print_exc()  # the full traceback goes to the stage's log
        kind = "TransientError" if is_transient(exc) else "StageFailed"
        print(f"{ERROR_PREFIX} {kind}: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 4
    print(f"{job.name} round {job.round}: {store.path(ref)}")
    return 0


def one_line(exc: BaseException) -> str:
    """The message on one line, its line breaks escaped (the launcher restores them)."""
    return str(exc).replace("\\", "\\\\").replace("\n", "\\n")


def default_step(module: str) -> str:
    """The step a stage module plays in a round: the multi-turn modules stand in for the single-turn steps."""
    return module.removesuffix("_dialogues")


def job_from_config(name: str, args: argparse.Namespace) -> tuple[StageJob, Store]:
    from rebelflow.config.loading import load_config

    if not args.config:
        raise DataError("give a campaign config (or --job FILE).")
    if name in RM_STAGES:
        from rebelflow.config.reward_model import RMConfig
        from rebelflow.planning.reward_model import rm_jobs

        cfg = load_config(args.config, args.set, store=args.store, root=RMConfig)
        store = Store(cfg.store.root)
        jobs = rm_jobs(cfg, train=cfg.data is not None, store=store)
    else:
        from rebelflow.planning.campaign import campaign_jobs

        cfg = load_config(args.config, args.set, store=args.store)
        store = Store(cfg.store.root)
        jobs = campaign_jobs(cfg)
    job = pick_job(jobs, name, args.step or default_step(name), args.round)
    missing = [r.id for r in job.inputs if not store.is_complete(r)]
    if missing:
        raise DataError(f"inputs {missing} are not in {store.root}; run the earlier stages first (rebelflow run, or rm-train, with CONFIG)")
    return job, store


def pick_job(jobs: list[StageJob], module: str, step: str, round_k: int | None) -> StageJob:
    """The job of stage `module` named `step` in round `round_k` (default: 1, or 0 for a step that only
    round 0 has)."""
    candidates = [j for j in jobs if j.stage == module and j.name == step]
    if round_k is None:
        round_k = 0 if candidates and all(j.round == 0 for j in candidates) else 1
    picked = [j for j in candidates if j.round == round_k]
    if not picked:
        steps = sorted({f"{j.name} (round {j.round})" for j in jobs if j.stage == module})
        raise DataError(
            f"the config has no {step} step of the {module} stage in round {round_k}. This stage's steps: "
            f"{', '.join(steps) or 'none (is the stage switched off by stop_after?)'}. Choose one with --step and --round."
        )
    return picked[0]
