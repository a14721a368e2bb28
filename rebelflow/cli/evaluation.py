"""The commands that evaluate and take results out: `export`, `samples`, `compare`, `mt-bench`,
`alpaca-eval` (registered on the shared app when rebelflow.cli is imported)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rebelflow.cli.common import VerboseOpt, app, console, console_for, err, report
from rebelflow.config.errors import REPORTED, RebelflowError
from rebelflow.ops.console import one_message_per_failure, start_prefect


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="a model artifact: id, unique id prefix, or folder")],
    dest: Annotated[str, typer.Argument(help="the folder to write (new or empty)")],
    store: Annotated[str, typer.Option("--store", help="artifact store root")] = "rebelflow-store",
    force: Annotated[bool, typer.Option(help="replace a folder that is not empty")] = False,
) -> None:
    """A model artifact as a plain HF folder (weights, config, tokenizer with its chat template, card with
    lineage): ready for from_pretrained, vllm serve or a push to the Hub."""
    from rebelflow.ops.artifacts import export_model
    from rebelflow.store.local import Store

    try:
        out = export_model(Store(store), ref, Path(dest), force)
    except (KeyError, RebelflowError) as exc:
        err.print(f"[bold red]cannot export[/]: {escape(str(exc.args[0] if isinstance(exc, KeyError) else exc))}",
                  markup=True, highlight=False)
        raise typer.Exit(2) from None
    console.print(f"exported {ref} to {out}", soft_wrap=True)


@app.command()
def samples(
    campaign: Annotated[str, typer.Argument(help="the campaign's name")],
    round_: Annotated[int, typer.Option("--round", help="the round whose policy to show")] = 1,
    store: Annotated[str, typer.Option("--store", help="artifact store root")] = "rebelflow-store",
    limit: Annotated[int, typer.Option(help="prompts to show (0: all)")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (every prompt)")] = False,
) -> None:
    """A round's evaluation prompts with every sample of its policy and of the baseline, and their rewards."""
    from rebelflow.ops.artifacts import round_samples
    from rebelflow.store.local import Store

    try:
        rows = round_samples(Store(store), campaign, round_)
    except RebelflowError as exc:
        err.print(f"[bold red]no samples[/]: {escape(str(exc))}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    for row in rows[: limit or None]:
        table = Table(title=f"{row['prompt_id']}: {row['prompt'][:200]}", title_justify="left", show_lines=True)
        for col in (f"round {round_} policy", "reward", "baseline", "reward "):
            table.add_column(col, justify="right" if col.startswith("reward") else "left")
        for i in range(max(len(row["policy"]), len(row["baseline"]))):
            mine = row["policy"][i] if i < len(row["policy"]) else {"response": "", "reward": None}
            theirs = row["baseline"][i] if i < len(row["baseline"]) else {"response": "", "reward": None}
            table.add_row(mine["response"], _reward(mine["reward"]), theirs["response"], _reward(theirs["reward"]))
        console.print(table)
    if limit and len(rows) > limit:
        console.print(f"… {len(rows) - limit} more prompts (--limit 0 shows all, --json prints them)")


@app.command()
def compare(
    campaigns: Annotated[list[str] | None, typer.Argument(help="campaigns (each with its variants); all by default")] = None,
    store: Annotated[str, typer.Option("--store", help="artifact store root")] = "rebelflow-store",
    out: Annotated[str | None, typer.Option(help="where the plot goes (default: <store>/compare.png)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON rows")] = False,
) -> None:
    """Runs side by side: reward, reward-model and judge win rates per round for every recorded campaign and
    variant (a run under --set overrides that change results), each labelled by its overrides; and a plot."""
    from rebelflow.flows.compare import comparison_rows, plot_comparison, recorded_runs
    from rebelflow.flows.summary import judge_text
    from rebelflow.store.local import Store

    try:
        runs = recorded_runs(Store(store), campaigns or [])
    except RebelflowError as exc:
        err.print(f"[bold red]nothing to compare[/]: {escape(str(exc))}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    if not runs:
        err.print(f"no campaign in {store} has a summary yet: run one first (e.g. make demo).")
        raise typer.Exit(2)
    rows = comparison_rows(runs)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table(title=f"runs compared · store {store} (round 0 = the starting policy)")
    table.add_column("run", min_width=16, overflow="fold")  # a variant's label wraps at its overrides; the numbers keep their width
    for col in ("round", "policy\nreward", "baseline\nreward", "win rate\nvs baseline", "judge\nwin rate"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(escape(r["run"]) if r["round"] == 0 or len(runs) == 1 else "", str(r["round"]), f"{r['reward']:.4f}",
                      f"{r['baseline_reward']:.4f}", f"{r['win_rate']:.3f}", judge_text(r))
    console.print(table)
    path = Path(out) if out else Path(store) / "compare.png"
    path.write_bytes(plot_comparison(runs, "runs compared: " + ", ".join(sorted({s["campaign"] for s in runs}))[:120]))
    console.print(f"Plot: {path}")


def _reward(value: float | None) -> str:
    return "invalid" if value is None else f"{value:.3f}"


# the options both evaluation commands take
JudgeOpt = Annotated[str, typer.Option(help="the judge: the served model's name (with --judge-url), or a Python "
                                            "callable module:function / file.py:function")]
JudgeUrlOpt = Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8001/v1")]
KeyEnvOpt = Annotated[str | None, typer.Option(help="environment variable holding the endpoint's key")]
ConcurrencyOpt = Annotated[int, typer.Option(help="judge requests in flight at once")]
EngineOpt = Annotated[str, typer.Option(help="hf or vllm")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16")]
StoreRootOpt = Annotated[str, typer.Option("--store", help="artifact store root")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the summary as JSON")]
PolicyArg = Annotated[str, typer.Argument(help="a model artifact (id or prefix), a model folder or a Hub id")]


@app.command("mt-bench")
def mt_bench(
    policy: PolicyArg,
    judge: JudgeOpt,
    judge_url: JudgeUrlOpt = None,
    judge_key_env: KeyEnvOpt = None,
    concurrency: ConcurrencyOpt = 8,
    questions: Annotated[int | None, typer.Option(help="only the first N of the 80 questions")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="per answer")] = 1024,
    engine: EngineOpt = "hf",
    dtype: DtypeOpt = "float32",
    store: StoreRootOpt = "rebelflow-store",
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """MT-Bench: the policy answers the 80 two-turn questions (FastChat's temperature per category), a grader
    rates every turn 1-10 (math, reasoning and coding against the reference answers); prints turn 1, turn 2,
    the average and each category. Resumes like run; every grading is cached."""
    from rebelflow.ops.evaluation import mt_bench_config

    cfg, summary = _evaluate("mt-bench", verbose, as_json, lambda: mt_bench_config(
        policy, judge, judge_url, judge_key_env, concurrency, questions=questions, max_new_tokens=max_new_tokens,
        engine=engine, dtype=dtype, store={"root": store}))
    if summary is None:
        return
    table = Table(title=f"MT-Bench · {summary['policy']} · graded by {summary['judge']}")
    for col in ("turn 1", "turn 2", "average", "graded", "unjudged"):
        table.add_column(col, justify="right")
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    table.add_row(fmt(summary["turn_1"]), fmt(summary["turn_2"]), fmt(summary["average"]), str(summary["graded"]),
                  str(summary["unjudged"]))
    console.print(table)
    console.print("by category: " + " · ".join(f"{c} {fmt(v)}" for c, v in summary["by_category"].items()))
    console.print(f"Summary: {store}/campaigns/{summary['name']}/summary.json")


@app.command("alpaca-eval")
def alpaca_eval(
    policy: PolicyArg,
    reference: Annotated[str, typer.Option(help="reference outputs: JSON/JSONL of {instruction, output}, or `hub` "
                                                "for AlpacaEval 2.0's")],
    judge: JudgeOpt,
    judge_url: JudgeUrlOpt = None,
    judge_key_env: KeyEnvOpt = None,
    concurrency: ConcurrencyOpt = 8,
    limit: Annotated[int | None, typer.Option(help="only the first N instructions")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="per answer")] = 2048,
    engine: EngineOpt = "hf",
    dtype: DtypeOpt = "float32",
    store: StoreRootOpt = "rebelflow-store",
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """AlpacaEval-style: the policy answers each instruction, a judge compares its answer with the reference
    output in both orders (preference format); prints the raw and the length-controlled win rate."""
    from rebelflow.ops.evaluation import alpaca_eval_config

    cfg, summary = _evaluate("alpaca-eval", verbose, as_json, lambda: alpaca_eval_config(
        policy, reference, judge, judge_url, judge_key_env, concurrency, limit=limit, max_new_tokens=max_new_tokens,
        engine=engine, dtype=dtype, store={"root": store}))
    if summary is None:
        return
    lc = summary.get("judge_lc_win_rate")
    table = Table(title=f"AlpacaEval-style · {summary['policy']} against {Path(cfg.reference).name} · judged by {summary['judge']}")
    for col in ("win rate", "length-controlled", "wins", "ties", "losses", "unjudged"):
        table.add_column(col, justify="right")
    table.add_row(f"{summary['judge_win_rate']:.4f}", "–" if lc is None else f"{lc:.4f}", str(summary["judge_wins"]),
                  str(summary["judge_ties"]), str(summary["judge_losses"]), str(summary["unjudged"]))
    console.print(table)
    console.print(f"Summary: {store}/campaigns/{summary['name']}/summary.json")


def _evaluate(kind: str, verbose: bool, as_json: bool, make_config):
    """An evaluation command's run: its options checked (exit 2 on a problem, before any model loads), its
    flow (flows.evaluation) under the run's console; the summary printed as JSON (then None comes back for
    it) or returned for the command's table."""
    try:
        cfg = make_config()
    except RebelflowError as exc:
        err.print(f"[bold red]config error[/]: {escape(str(exc))}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with console_for(cfg.store.root, kind, verbose):
        from rebelflow.flows import evaluation  # Prefect's logging set up inside the run's console

        start_prefect()
        with one_message_per_failure():
            try:
                summary = getattr(evaluation, kind.replace("-", "_") + "_flow")(cfg)["summary"]
            except REPORTED as exc:
                report(exc, cfg.store.root)
    if as_json:
        print(json.dumps(summary, indent=1))
        return cfg, None
    return cfg, summary
