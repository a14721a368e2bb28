"""`rebelflow` command line: run, plan, history, show, doctor, rm-train, rm-eval, deploy here; export, samples,
compare, mt-bench, alpaca-eval in cli.evaluation; server and worker in cli.server; what they share in
cli.common.

Configuration errors and unusable prompt data exit with code 2 before any stage starts; a data error
inside a stage (e.g. a reward that fails on every response) exits with 1 and one readable message.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rebelflow.cli.common import (
    ConfigArg,
    RehearseOpt,
    SetOpt,
    StoreOpt,
    VerboseOpt,
    add_column,
    app,
    console,
    console_for,
    err,
    report,
)
from rebelflow.config.errors import REPORTED, ConfigError, RebelflowError
from rebelflow.ops.console import one_message_per_failure, start_prefect


def _rehearsal(config: str, overrides: list[str], store: str | None, root):
    """The rehearsal of a preset (models and data built on first use); prints each substitution."""
    from rebelflow.rehearsal import rehearsal_of

    cfg, notes = rehearsal_of(config, overrides, store, root)
    err.print(f"[bold]rehearsal of {escape(config)}[/] — what differs from the preset:", markup=True, highlight=False)
    for line in notes:
        err.print(f"  {line}", markup=False, highlight=False)
    return cfg


def _load(config: str, overrides: list[str], store: str | None, check_data: bool = False, rehearse: bool = False):
    """Load and validate (or make the preset's rehearsal); with check_data also read the prompts. Problems
    exit with code 2."""
    from rebelflow.config.campaign import RunConfig
    from rebelflow.config.loading import load_config
    from rebelflow.planning.campaign import campaign_jobs, name_variant
    from rebelflow.planning.preflight import preflight

    try:
        cfg = _rehearsal(config, overrides, store, RunConfig) if rehearse else load_config(config, overrides, store)
        campaign_jobs(cfg)  # resolves the reward function and hashes the prompt file
        cfg = name_variant(cfg, _without_overrides(config, store, rehearse) if overrides else None, overrides)
        if check_data:
            preflight(cfg)
    except RebelflowError as exc:
        what = "config error" if isinstance(exc, ConfigError) else "input error"
        err.print(f"[bold red]{what}[/]: {escape(str(exc))}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    return cfg


def _without_overrides(config: str, store: str | None, rehearse: bool):
    """The campaign as its file writes it (what a run under overrides is a variant of); None when the file
    alone does not load."""
    from rebelflow.config.campaign import RunConfig
    from rebelflow.config.loading import load_config

    try:
        if rehearse:
            from rebelflow.rehearsal import rehearsal_of

            return rehearsal_of(config, [], store, RunConfig)[0]
        return load_config(config, [], store)
    except RebelflowError:
        return None


RecordOpt = Annotated[bool, typer.Option(
    "--record", help="go through Prefect even when every stage is in the store and the summary is current "
                     "(records a flow run of cached stages; without it such a re-run only prints the tables)")]


@app.command()
def run(config: ConfigArg, set_: SetOpt = [], store: StoreOpt = None, rehearse: RehearseOpt = False,
        verbose: VerboseOpt = False, record: RecordOpt = False) -> None:
    """Run or resume a campaign: finished stages are taken from the store, the rest run."""
    cfg = _load(config, set_, store, check_data=True, rehearse=rehearse)
    if not record and _print_up_to_date(cfg):
        return
    with console_for(cfg.store.root, cfg.campaign, verbose):
        _run_campaign(cfg)


def _run_campaign(cfg) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from rebelflow.flows.campaign import campaign_flow

    started = time.time()
    start_prefect()
    with one_message_per_failure():
        try:
            result = campaign_flow(cfg)
        except REPORTED as exc:
            report(exc, cfg.store.root)
    _print_campaign(cfg, result["records"], f"{time.time() - started:.1f}s", result["summary"], result.get("policy"))
    console.print("Browse the runs in the Prefect UI: rebelflow server  (then open the printed address)")


def _print_up_to_date(cfg) -> bool:
    """A re-run that would change nothing (every stage in the store, the summary made from exactly them;
    no Hub to sync with): print what the run would print, without starting Prefect. False otherwise."""
    from rebelflow.flows.summary import up_to_date
    from rebelflow.planning.campaign import campaign_plan
    from rebelflow.store.local import Store
    from rebelflow.store.resources import recorded_peak

    if cfg.hub is not None:
        return False
    started = time.time()
    jobs, policy = campaign_plan(cfg)
    store = Store(cfg.store.root)
    summary = up_to_date(store, cfg.campaign, [j.ref for j in jobs], cfg.variant.model_dump() if cfg.variant else None)
    if summary is None:
        return False
    for j in jobs:  # the campaign index names these artifacts again, as the flow's run would
        store.record(cfg.campaign, j.round, j.name, j.ref)
    records = [{"round": j.round, "stage": j.name, "id": j.ref.id, "status": "cached", "seconds": 0.0,
                "peak_mib": recorded_peak(store.manifest(j.ref))} for j in jobs]
    _print_campaign(cfg, records, f"{time.time() - started:.1f}s", summary, policy)
    console.print("Up to date: every stage is in the store and the summary was made from them, so nothing ran "
                  "and no flow run was recorded (--record records one).", soft_wrap=True)
    return True


def _print_campaign(cfg, records: list[dict], took: str, summary: dict | None, policy) -> None:
    """The stage table (one row per stage: ran, cached or failed), the rounds' evaluation, the final policy."""
    variant = f" (variant of {cfg.variant.of}: {escape(cfg.variant.label())})" if cfg.variant else ""
    table = Table(title=f"campaign {cfg.campaign}{variant} · {took} · store {cfg.store.root}")
    for col in ("round", "stage", "artifact", "status", "seconds", "peak MiB"):
        add_column(table, col, [r["id"] for r in records] if col == "artifact" else None)
    for r in records:
        peak = "–" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
        table.add_row(str(r["round"]), r["stage"], r["id"], r["status"], f"{r['seconds']:.2f}", peak)
    console.print(table)
    if summary:
        _print_rounds(summary, cfg.store.root)
    _print_policy(policy, cfg.store.root)


def _print_policy(policy, store_root: str) -> None:
    from rebelflow.flows.summary import final_policy_note

    note = final_policy_note(policy, store_root)
    if note is not None:
        console.print(note, soft_wrap=True)


def _print_rounds(summary: dict, store_root: str) -> None:
    from rebelflow.flows.summary import by_turn_text, judge_text

    table = Table(title=f"evaluation per round (round 0 = the starting policy) · campaign {summary['campaign']}")
    by_turn = any("win_rate_by_turn" in r for r in summary["rounds"])
    for col in ("round", "policy reward", "baseline reward", "win rate vs baseline"):
        table.add_column(col, justify="right")
    table.add_column("win rate by turn 1..H" if by_turn else "mean tokens", justify="right")
    judged = any("judge_win_rate" in r for r in summary["rounds"])
    if judged:
        table.add_column("judge win rate" + (" (by turn)" if by_turn else ""), justify="right")
    for r in summary["rounds"]:
        last = by_turn_text(r) if by_turn else f"{r['mean_tokens']:.1f}"
        cells = [str(r["round"]), f"{r['reward_mean']:.4f}", f"{r['baseline_reward_mean']:.4f}", f"{r['win_rate']:.3f}", last]
        table.add_row(*cells, *([judge_text(r)] if judged else []))
    console.print(table)
    for r in summary["rounds"]:
        for line in r.get("diagnostics", []):
            console.print(f"[yellow]round {r['round']}:[/] {escape(line)}", soft_wrap=True)
    folder = f"{store_root}/campaigns/{summary['campaign']}"
    online = " · online iterations: online.png" if summary.get("online") else ""
    console.print(f"Summary: {folder}/summary.json · plot: {folder}/summary.png{online}")


@app.command()
def plan(
    config: ConfigArg,
    set_: SetOpt = [],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False,
    rehearse: RehearseOpt = False,
) -> None:
    """Validate the config and list every stage with its fingerprint and cached/pending; does no work."""
    from rebelflow.planning.campaign import plan_status

    # With --json, stdout carries the JSON alone: libraries that print while a rehearsal builds its stand-ins
    # (DeepSpeed's accelerator notice) go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        cfg = _load(config, set_, store, rehearse=rehearse)
        rows = plan_status(cfg)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"plan for {cfg.campaign} (store {cfg.store.root})")
    notes = any("note" in r for r in rows)
    for col in ("round", "stage", "fingerprint", "status", *(["note"] if notes else [])):
        add_column(table, col, [r["fingerprint"] for r in rows] if col == "fingerprint" else None)
    for r in rows:
        color = "green" if r["status"] == "cached" else "yellow"
        table.add_row(str(r["round"]), r["stage"], r["fingerprint"], f"[{color}]{r['status']}[/]",
                      *([r.get("note", "")] if notes else []))
    console.print(table)


@app.command()
def history(
    limit: Annotated[int, typer.Option(help="most recent campaign/round runs to show")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Campaigns, rounds and stages with states and durations, read from Prefect's API."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from rebelflow.ops.history import read_history

    runs = read_history(limit)
    if as_json:
        print(json.dumps(runs, indent=2, default=str))
        return
    table = Table(title="rebelflow runs (newest first)")
    for col in ("flow run / stage", "flow", "state", "started", "seconds"):
        table.add_column(col)
    for r in runs:
        table.add_row(r["name"], r["flow"], r["state"], str(r["start"])[:19], _secs(r["seconds"]))
        if r["overrides"] and r["flow"] == "campaign":  # a variant: what it changed
            table.add_row(escape(f"  variant: {' '.join(r['overrides'])}"), "", "", "", "")
        for t in r["tasks"]:
            table.add_row(f"  └ {t['name']}", "", t["state"], "", _secs(t["seconds"]))
            if t.get("curve"):  # an online round: its per-iteration curves, first → last
                table.add_row(f"     {t['curve']}", "", "", "", "")
    console.print(table)


def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="artifact id, unique id prefix, or artifact folder")],
    store: Annotated[str, typer.Option("--store", help="artifact store root")] = "rebelflow-store",
    rows: Annotated[int, typer.Option(help="rows to print")] = 3,
) -> None:
    """An artifact's manifest, lineage and a few rows."""
    from rebelflow.store.local import Store

    st = Store(store)
    try:
        found = st.find(ref)
    except KeyError as exc:
        err.print(f"[bold red]not found[/]: {escape(str(exc.args[0]))}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    manifest = st.manifest(found)
    problem = st.verify(found)
    console.print(f"[bold]{found.id}[/]  ({manifest['kind']}, stage {manifest['stage']} v{manifest['code_version']})")
    console.print(f"folder: {st.path(found)}   verified: {'yes' if problem is None else problem}")
    console.print(f"made: {manifest['created_at']} in {manifest['timings']['seconds']}s   rows: {manifest['rows']}")
    console.print("settings: " + json.dumps(manifest["settings"], sort_keys=True))
    summary = {k: v for k, v in manifest.get("summary", {}).items() if k not in ("sample", "curve")}
    if summary:
        table = Table(title="summary", title_justify="left", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in summary.items():
            table.add_row(key, value if isinstance(value, str) else json.dumps(value))
        console.print(table)
    if manifest.get("summary", {}).get("curve"):
        console.print(f"curve: {len(manifest['summary']['curve'])} points in the summary (metrics.jsonl has every one)")
    console.print("lineage:")
    for item in st.lineage(found):
        console.print(f"  {item['id']}  ({item['created_at']})")
    for source in manifest.get("input_sources", {}).values():
        console.print(f"  external model {source}")
    if manifest["kind"] == "dataset" and rows > 0:
        for i, row in enumerate(st.read_table(found).slice(0, rows).to_pylist()):
            console.print(f"row {i}:")
            for key, value in row.items():
                console.print(f"  {key}: {_short(value)!r}", markup=False, highlight=False, soft_wrap=True)



def _short(value):
    if isinstance(value, list) and len(value) > 12:
        return [*value[:12], f"… {len(value)} items"]
    if isinstance(value, str) and len(value) > 160:
        return value[:160] + "…"
    return value


@app.command()
def deploy(
    config: ConfigArg,
    cron: Annotated[str | None, typer.Option(help="schedule, e.g. '0 */6 * * *'")] = None,
    interval: Annotated[str | None, typer.Option(help="schedule, e.g. 6h, 30m, 90s")] = None,
    name: Annotated[str | None, typer.Option(help="deployment name (default: the campaign's)")] = None,
    pool: Annotated[str | None, typer.Option(help="register on this process work pool instead of serving")] = None,
    set_: SetOpt = [],
    store: StoreOpt = None,
) -> None:
    """Deploy the campaign: each scheduled (or manual) run runs its next incomplete round, resuming a failed
    one. Without --pool this process serves the deployment until Ctrl-C; with --pool it registers it for
    `rebelflow worker --pool POOL`. Two runs of one campaign never overlap."""
    from rebelflow.ops import deploy as dp

    cfg = _load(config, set_, store, check_data=True)
    try:
        if cron and interval:
            raise ConfigError("give --cron or --interval, not both.")
        every = dp.parse_interval(interval) if interval else None
        cron = dp.check_cron(cron) if cron else None
    except ConfigError as exc:
        err.print(f"[bold red]config error[/]: {escape(str(exc))}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    if not os.environ.get("PREFECT_API_URL"):
        err.print("PREFECT_API_URL is not set: the deployment lives in a temporary server that stops with this "
                  "command. Start `rebelflow server` and export the address it prints to keep it and see it in the UI.")
    params = dp.parameters(config, set_, cfg.store.root)
    name = name or cfg.campaign
    when = f"cron {cron}" if cron else f"every {every}" if every else "no schedule (run it from the UI or the API)"
    if pool:
        dp.deploy_to_pool(name, params, cron, every, pool)
        console.print(f"deployment campaign-next-round/{name} on work pool {pool}, {when}. Start a worker: "
                      f"rebelflow worker --pool {pool}", markup=False, highlight=False)
        return
    console.print(f"serving campaign-next-round/{name}, {when}; Ctrl-C stops", markup=False, highlight=False)
    dp.serve(name, params, cron, every)


def _load_rm(config: str, overrides: list[str], store: str | None, train: bool | None, rehearse: bool = False):
    """Load a reward-model config and plan its jobs (rm-train's, rm-eval's, or with None rm-train's when the
    config has training data); problems exit with code 2 before any work."""
    from rebelflow.config.loading import load_config
    from rebelflow.config.reward_model import RMConfig
    from rebelflow.planning.preflight import check_models, check_reward_tokenizer, reward_model_models
    from rebelflow.planning.reward_model import rm_jobs
    from rebelflow.store.local import Store

    try:
        cfg = (_rehearsal(config, overrides, store, RMConfig) if rehearse
               else load_config(config, overrides, store, root=RMConfig))
        check_models(reward_model_models(cfg))
        check_reward_tokenizer(cfg.eval.reward, "eval.reward")
        rm_jobs(cfg, train=cfg.data is not None if train is None else train, store=Store(cfg.store.root))
    except RebelflowError as exc:
        what = "config error" if isinstance(exc, ConfigError) else "input error"
        err.print(f"[bold red]{what}[/]: {escape(str(exc))}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    return cfg


def _run_rm(config: str, overrides: list[str], store: str | None, mode: str, rehearse: bool, verbose: bool) -> None:
    cfg = _load_rm(config, overrides, store, train=mode == "train", rehearse=rehearse)
    with console_for(cfg.store.root, cfg.name, verbose):
        _reward_model(cfg, mode)


def _reward_model(cfg, mode: str) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from rebelflow.flows.reward_model import reward_model_flow

    started = time.time()
    start_prefect()
    with one_message_per_failure():
        try:
            result = reward_model_flow(cfg, mode)
        except REPORTED as exc:
            report(exc, cfg.store.root)
    table = Table(title=f"reward model {cfg.name} · {time.time() - started:.1f}s · store {cfg.store.root}")
    for col in ("stage", "artifact", "status", "seconds"):
        add_column(table, col, [r["id"] for r in result["records"]] if col == "artifact" else None)
    for r in result["records"]:
        table.add_row(r["stage"], r["id"], r["status"], f"{r['seconds']:.2f}")
    console.print(table)
    s = result["summary"]
    scores = Table(title="scores")
    scores.add_column("metric")
    scores.add_column("value", justify="right")
    for key in ("heldout_accuracy", "accuracy", "overall"):
        if s.get(key) is not None:
            scores.add_row(key, f"{s[key]:.4f}")
    for section, value in s.get("sections", {}).items():
        scores.add_row(f"  {section}", f"{value:.4f}")
    if s.get("weighting"):
        scores.add_row("weighting", s["weighting"])
    console.print(scores)
    if s.get("unweighted_subsets"):
        console.print(f"Subsets in no section of weighting {s['weighting']}: {', '.join(s['unweighted_subsets'])} "
                      "(they count in the accuracy only; set eval.weights to a file that places them).",
                      markup=False, highlight=False, soft_wrap=True)
    if mode == "train":
        console.print(f"Use it in a campaign: reward: {{backend: classifier, artifact: {s['reward_model']}}} "
                      f"(same --store), or load {s['model_path']} with AutoModelForSequenceClassification.",
                      markup=False, highlight=False, soft_wrap=True)



@app.command("rm-train")
def rm_train(config: Annotated[str, typer.Argument(help="reward-model YAML, e.g. configs/demo-rm.yaml")],
             set_: SetOpt = [], store: StoreOpt = None, rehearse: RehearseOpt = False,
             verbose: VerboseOpt = False) -> None:
    """Train a Bradley-Terry reward model on preference pairs, then evaluate it on the held-out pairs and,
    if eval.data is set, on a RewardBench-format set. Resumes like run."""
    _run_rm(config, set_, store, "train", rehearse, verbose)


@app.command("rm-eval")
def rm_eval(config: Annotated[str, typer.Argument(help="reward-model YAML, e.g. configs/demo-rm.yaml")],
            set_: SetOpt = [], store: StoreOpt = None, rehearse: RehearseOpt = False,
            verbose: VerboseOpt = False) -> None:
    """Score a reward model on eval.data the RewardBench way: eval.reward if set, else the model rm-train
    made from this config."""
    _run_rm(config, set_, store, "eval", rehearse, verbose)


@app.command()
def doctor(config: Annotated[str | None, typer.Argument(help="a campaign or reward-model YAML (optional)")] = None,
           set_: SetOpt = []) -> None:
    """What this machine offers (GPUs, CUDA, DeepSpeed, the vLLM environment) and, for a config, where and
    with which engine each stage will run. Exit code 1 if the config cannot run here."""
    from rebelflow.ops import doctor as dr

    table = Table(title="this machine")
    for col in ("item", "state", "fix"):
        table.add_column(col)
    for row in [*dr.machine(), dr.vllm_env()]:
        table.add_row(*row)
    console.print(table)
    if config is None:
        return
    from rebelflow.config.loading import is_reward_model_config

    rm = is_reward_model_config(config)
    cfg = _load_rm(config, set_, None, train=None) if rm else _load(config, set_, None)
    table = Table(title=f"stages of {config}")
    for col in ("stage", "engine", "runs as"):
        table.add_column(col)
    for row in dr.rm_stages(cfg) if rm else dr.stages(cfg):
        table.add_row(*row)
    console.print(table)
    from rebelflow.planning.preflight import engine_problems, launcher_problems

    problems = launcher_problems([cfg.train.launcher, cfg.eval.launcher]) if rm else engine_problems(cfg)
    for problem in problems:
        err.print(f"[bold red]cannot run here[/]: {escape(problem)}", markup=True, highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print("ready: every stage's interpreter and engine are available")


from rebelflow.cli import evaluation, server  # noqa: E402,F401  (they register their commands on the app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
