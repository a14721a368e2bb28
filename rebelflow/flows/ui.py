"""What each stage shows in the Prefect UI: a summary table, filter counts, reward statistics and sample
rows, read from the artifact's manifest. Called from flow bodies, so cached runs still show them."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from rebelflow.flows.compare import comparison_rows, plot_comparison, recorded_runs
from rebelflow.flows.summary import by_turn_text, judge_text
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef


def artifact_key(*parts: Any) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")[:100]


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (dict, list)):
        return json.dumps(value)[:200]
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "…"
    return value


def publish_stage(campaign: str, round_k: int, stage: str, ref: ArtifactRef, store: Store, seconds: float) -> None:
    manifest = store.manifest(ref)
    summary = dict(manifest.get("summary", {}))
    tables = {k: summary.pop(k) for k in [k for k, v in summary.items() if _is_rows(v)]}  # sample rows, curves
    counts = {k: v for k, v in summary.items() if isinstance(v, dict)}
    lines = [
        f"### {stage} · round {round_k} · `{ref.id}`",
        f"Stored at `{store.path(ref)}` · {manifest.get('rows', 0)} rows · made {manifest['created_at']} · "
        f"this run: {seconds:.1f}s",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in summary.items() if k not in counts),
    ]
    for name, table in counts.items():  # filter counts, drops, invalid reasons: one row per reason
        lines += ["", f"#### {name}", "", "| reason | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in table.items()] or ["| (none) | 0 |"]
    lines += ["", "Inputs: " + (", ".join(f"`{i}`" for i in manifest["inputs"]) or "none"),
              "", f"Campaign: [{campaign} summary](/artifacts/key/{artifact_key(campaign, 'summary')}) · "
                  f"[stages](/artifacts/key/{artifact_key(campaign, 'stages')})"]
    key = artifact_key(campaign, f"r{round_k}", stage)
    create_markdown_artifact("\n".join(lines), key=key, description=f"{stage} summary, round {round_k}")
    for name, rows in tables.items():
        rows = [{k: _cell(v) for k, v in row.items()} for row in rows]
        create_table_artifact(rows, key=f"{key}-{artifact_key(name)}", description=f"{stage} {name}, round {round_k}")


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def publish_campaign(campaign: str, records: list[dict[str, Any]], summary: dict | None, store: Store) -> None:
    rows = [{k: _cell(v) for k, v in r.items()} for r in records]
    create_table_artifact(rows, key=artifact_key(campaign, "stages"), description=f"campaign {campaign}: stages")
    if summary is None:
        return
    folder = store.root / "campaigns" / campaign
    lines = [
        f"### campaign {campaign}",
        "",
        "| round | policy reward | baseline reward | win rate vs baseline | win rate by turn | judge win rate |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['round']} | {r['reward_mean']:.4f} | {r['baseline_reward_mean']:.4f} | {r['win_rate']:.3f} | "
            f"{by_turn_text(r, ' · ')} | {judge_text(r)} |"
            for r in summary["rounds"]
        ),
        "",
        f"Round 0 is the starting policy. Data: `{folder / 'summary.json'}`",
        *(f"- round {r['round']}: {line}" for r in summary["rounds"] for line in r.get("diagnostics", [])),
    ]
    for name, alt in (("summary.png", "reward and win rate per round"), ("online.png", "online iterations")):
        plot = folder / name
        if plot.is_file():  # inline, so the UI shows it without access to the store
            lines += ["", f"![{alt}](data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()})"]
    lines += ["", "#### stage artifacts by round", "", *_round_links(campaign, records)]
    create_markdown_artifact("\n".join(lines), key=artifact_key(campaign, "summary"), description="rewards and win rates per round")


def publish_comparison(campaign: str, store: Store) -> None:
    """The campaign beside its variants (reward, win rates per round, one plot) when it has any."""
    runs = recorded_runs(store, [campaign])
    if len(runs) < 2:
        return
    lines = [f"### {campaign} and its variants", "", "| run | round | reward | win rate vs baseline | judge win rate |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['round']} | {r['reward']:.4f} | {r['win_rate']:.3f} | "
              f"{judge_text(r)} |" for r in comparison_rows(runs)]
    png = base64.b64encode(plot_comparison(runs, f"{campaign}: runs compared")).decode()
    lines += ["", f"![reward and win rates per round, per run](data:image/png;base64,{png})",
              "", "The same table and plot: `rebelflow compare " + campaign + "`."]
    create_markdown_artifact("\n".join(lines), key=artifact_key(campaign, "compare"), description="runs compared")


def _round_links(campaign: str, records: list[dict[str, Any]]) -> list[str]:
    """One line per round linking to each stage's summary page in the UI."""
    by_round: dict[int, list[str]] = {}
    for r in records:
        key = artifact_key(campaign, f"r{r['round']}", r["stage"])
        by_round.setdefault(r["round"], []).append(f"[{r['stage']}](/artifacts/key/{key})")
    return [f"- round {k}: " + " · ".join(links) for k, links in sorted(by_round.items())]


def publish_reward_model(name: str, summary: dict[str, Any], store: Store) -> None:
    """The reward-model run's scores: held-out accuracy, section scores and the overall score."""
    lines = [f"### reward model {name}", "", "| metric | value |", "|---|---|"]
    for key in ("reward_model", "heldout_accuracy", "weighting", "accuracy", "overall"):
        if key in summary:
            lines.append(f"| {key} | {_cell(summary[key])} |")
    if summary.get("sections"):
        lines += ["", "| section | score |", "|---|---|", *(f"| {s} | {v:.4f} |" for s, v in summary["sections"].items())]
    lines += ["", f"Data: `{store.root / 'campaigns' / name / 'summary.json'}`"]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "summary"), description="reward-model scores")


def publish_mt_bench(name: str, summary: dict[str, Any]) -> None:
    """MT-Bench's table: turn 1, turn 2, average, and the score per category."""
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"### {name}", "", f"Policy `{summary['policy']}` · grader `{summary['judge']}` · "
             f"{summary['graded']} answers graded, {summary['unjudged']} unjudged", "",
             "| turn 1 | turn 2 | average |", "|---|---|---|",
             f"| {fmt(summary['turn_1'])} | {fmt(summary['turn_2'])} | {fmt(summary['average'])} |", "",
             "| category | score |", "|---|---|", *(f"| {c} | {fmt(v)} |" for c, v in summary["by_category"].items())]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name), description="MT-Bench scores")


def publish_alpaca_eval(name: str, summary: dict[str, Any]) -> None:
    """The raw and length-controlled win rates against the reference outputs."""
    lc = summary.get("judge_lc_win_rate")
    lines = [f"### {name}", "", f"Policy `{summary['policy']}` · judge `{summary['judge']}` · {summary['judged']} "
             f"instructions judged in both orders, {summary['unjudged']} unjudged", "",
             "| win rate | length-controlled win rate | wins | ties | losses |", "|---|---|---|---|---|",
             f"| {summary['judge_win_rate']:.4f} | {'–' if lc is None else f'{lc:.4f}'} | {summary['judge_wins']} | "
             f"{summary['judge_ties']} | {summary['judge_losses']} |"]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name), description="AlpacaEval-style win rates")
