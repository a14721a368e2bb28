"""Deployments: a campaign on a schedule, one round per trigger (`rebelflow deploy`).

Served (the default): this process creates the deployment and runs its flow runs until stopped, like
`flow.serve`. On a work pool (`--pool`): the deployment is registered with this checkout as its code source
and a process worker (`rebelflow worker --pool P`) runs it. Either way the deployment has a concurrency
limit of 1, so two rounds of one campaign never overlap, and the global limit `gpu` (one slot) exists, so
model stages of different runs take turns on the GPUs.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from rebelflow.config.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = "rebelflow/flows/scheduled.py:next_round_flow"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> timedelta:
    """'90' or '90s', '10m', '1h', '1d'."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not found or float(found.group(1)) <= 0:
        raise ConfigError(f"--interval {text!r}: give a positive duration such as 90s, 10m, 6h or 1d.")
    return timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2) or "s"])


def check_cron(expr: str) -> str:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expr)
    except ValueError:
        raise ConfigError(f"--cron {expr!r} is not a cron expression; e.g. '0 */6 * * *' (every 6 hours).") from None
    return expr


def parameters(config: str, overrides: list[str], store: str) -> dict:
    """What a deployment run gets: the config file's absolute path, the overrides, the store's absolute path."""
    return {"config": str(Path(config).resolve()), "overrides": list(overrides), "store": str(Path(store).resolve())}


def ensure_gpu_limit(name: str = "gpu", slots: int = 1) -> None:
    """Create the global concurrency limit model stages take, unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))


def serve(name: str, params: dict, cron: str | None, interval: timedelta | None) -> None:
    """Create the deployment and run its flow runs in this process until interrupted."""
    from rebelflow.flows.scheduled import next_round_flow

    ensure_gpu_limit()
    next_round_flow.serve(name=name, cron=cron, interval=interval, parameters=params, global_limit=1,
                          description="Runs the campaign's next incomplete round on each trigger.")


def deploy_to_pool(name: str, params: dict, cron: str | None, interval: timedelta | None, pool: str) -> str:
    """Register the deployment on a process work pool (made if missing); returns its id."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    ensure_gpu_limit()
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    remote = flow.from_source(source=str(REPO), entrypoint=ENTRYPOINT)
    return str(remote.deploy(name=name, work_pool_name=pool, cron=cron, interval=interval, parameters=params,
                             concurrency_limit=1, build=False, push=False, print_next_steps=False))
