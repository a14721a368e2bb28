"""Runs side by side (`rebelflow compare`, and the UI's comparison page of a campaign and its variants):
per round, the evaluation reward, the reward model's win rate and the judge's, for every recorded run,
each labelled by the overrides that made it (config VariantConfig). Read from the runs' summary.json."""

from __future__ import annotations

import io
import json
from typing import Any

from rebelflow.config.errors import DataError
from rebelflow.store.local import Store


def recorded_runs(store: Store, names: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The summaries of the store's campaigns that have rounds (reward-model runs have none): all of them, or
    those named and their variants. The campaigns come first, each followed by its variants."""
    found = []
    for path in sorted((store.root / "campaigns").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("rounds"):
            found.append(summary)
    if names:
        unknown = [n for n in names if not any(n in (s["campaign"], family(s)) for s in found)]
        if unknown:
            have = sorted({family(s) for s in found})
            raise DataError(f"no finished run of {', '.join(map(repr, unknown))} in {store.root}: campaigns with a "
                            f"summary are {have or 'none'}. Run one, or pass --store where it ran.")
        found = [s for s in found if s["campaign"] in names or family(s) in names]
    return sorted(found, key=lambda s: (family(s), "variant" in s, s["campaign"]))


def family(summary: dict[str, Any]) -> str:
    """The campaign a run belongs to: itself, or the one it varies."""
    return (summary.get("variant") or {}).get("of", summary["campaign"])


def label(summary: dict[str, Any]) -> str:
    """How a run is called in tables and legends: its campaign, or the campaign and its overrides."""
    variant = summary.get("variant")
    if not variant:
        return summary["campaign"]
    return f"{variant['of']} + {' '.join(variant['overrides'])}"


def comparison_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run and round: reward, baseline reward, RM win rate, judge win rate (None when unjudged)."""
    return [{"run": label(s), "campaign": s["campaign"], "round": r["round"], "reward": r["reward_mean"],
             "baseline_reward": r["baseline_reward_mean"], "win_rate": r["win_rate"],
             "judge_win_rate": r.get("judge_win_rate"), "judge_lc_win_rate": r.get("judge_lc_win_rate")}
            for s in runs for r in s["rounds"]]


def plot_comparison(runs: list[dict[str, Any]], title: str) -> bytes:
    """A PNG: mean evaluation reward per round (left) and win rates against the baseline (right: the
    reward model's solid, the judge's dotted), one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
    for i, s in enumerate(runs):
        colour, rounds = f"C{i % 10}", s["rounds"]
        ks = [r["round"] for r in rounds]
        left.plot(ks, [r["reward_mean"] for r in rounds], "o-", color=colour, label=label(s))
        right.plot(ks, [r["win_rate"] for r in rounds], "s-", color=colour, label=f"{label(s)}: reward model")
        judged = [(r["round"], r["judge_win_rate"]) for r in rounds if r.get("judge_win_rate") is not None]
        if judged:
            right.plot(*zip(*judged, strict=True), "^:", color=colour, label=f"{label(s)}: judge")
    left.set(xlabel="round", ylabel="mean evaluation reward", title="reward")
    right.set(xlabel="round", ylabel="win rate vs the starting policy", title="win rate", ylim=(0, 1))
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
