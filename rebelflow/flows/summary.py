"""The campaign summary: per round, the evaluation reward of the policy, the baseline's, and the win rate
of the policy over the baseline — as `summary.json` and `summary.png` in the campaign folder
(`<store>/campaigns/<name>/`). Round 0 is the starting policy against itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rebelflow.stages import evaluate, evaluate_dialogues
from rebelflow.store.local import Store, write_json_atomic
from rebelflow.store.refs import ArtifactRef


def campaign_summary(
    store: Store, campaign: str, baseline_scored: ArtifactRef, evaluations: list[tuple[int, ArtifactRef]],
    dialogues: bool = False,
) -> dict[str, Any]:
    """Write summary.json and summary.png; returns the summary."""
    base_rows = store.read_rows(baseline_scored)
    if dialogues:
        start = evaluate_dialogues.summarise(evaluate_dialogues.compare(base_rows, base_rows))
    else:
        start = evaluate.summarise(*evaluate.compare(base_rows, base_rows))
    rounds = [_entry(0, start, baseline_scored)]
    for k, ref in evaluations:
        rounds.append(_entry(k, store.manifest(ref)["summary"], ref))
    summary = {"campaign": campaign, "rounds": rounds}
    folder = store.root / "campaigns" / campaign
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "summary.json", summary)
    plot(rounds, folder / "summary.png", campaign)
    return summary


def _entry(k: int, s: dict[str, Any], ref: ArtifactRef) -> dict[str, Any]:
    entry = {
        "round": k,
        "reward_mean": s["reward_mean"],
        "baseline_reward_mean": s["baseline_reward_mean"],
        "win_rate": s["win_rate"],
        "mean_tokens": s.get("mean new tokens"),
        "artifact": ref.id,
    }
    if "win_rate_by_turn" in s:  # multi-turn: REFUEL's per-turn table (turns 1..H); win_rate is their mean
        entry["win_rate_by_turn"] = s["win_rate_by_turn"]
    return entry


def by_turn_text(entry: dict[str, Any], sep: str = " ") -> str:
    """A round's per-turn win rates for tables; '–' for a turn that no dialogue reached with valid rewards."""
    return sep.join("–" if w is None else f"{w:.2f}" for w in entry.get("win_rate_by_turn") or []) or "–"


def plot(rounds: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["round"] for r in rounds]
    fig, left = plt.subplots(figsize=(6, 3.5), dpi=100)
    left.plot(ks, [r["reward_mean"] for r in rounds], "o-", color="tab:blue", label="policy reward")
    left.plot(ks, [r["baseline_reward_mean"] for r in rounds], "--", color="tab:gray", label="baseline reward")
    left.set_xlabel("round")
    left.set_ylabel("mean evaluation reward")
    left.set_xticks(ks)
    right = left.twinx()
    right.plot(ks, [r["win_rate"] for r in rounds], "s-", color="tab:orange", label="win rate vs baseline")
    right.set_ylim(0, 1)
    right.set_ylabel("win rate")
    lines = left.get_lines() + right.get_lines()
    left.legend(lines, [ln.get_label() for ln in lines], loc="lower right", fontsize=8)
    left.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def read_summary(store: Store, campaign: str) -> dict[str, Any] | None:
    path = store.root / "campaigns" / campaign / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None
