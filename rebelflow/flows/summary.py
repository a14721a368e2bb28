"""The campaign summary: per round, the evaluation reward of the policy, the baseline's, and the win rate
of the policy over the baseline — as `summary.json` and `summary.png` in the campaign folder
(`<store>/campaigns/<name>/`). Round 0 is the starting policy against itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rebelflow.stages import evaluate, evaluate_dialogues
from rebelflow.store.local import Store, library_versions, write_json_atomic
from rebelflow.store.refs import ArtifactRef


def campaign_summary(
    store: Store, campaign: str, baseline_scored: ArtifactRef, evaluations: list[tuple[int, ArtifactRef]],
    dialogues: bool = False, online: list[tuple[int, ArtifactRef]] = (), judged: dict[int, ArtifactRef] | None = None,
    diagnostics: dict[int, list[str]] | None = None, variant: dict[str, Any] | None = None,
    made_from: list[str] = (),
) -> dict[str, Any]:
    """Write summary.json and summary.png (and online.png, the per-iteration curves of online rounds);
    returns the summary. `judged`: per round, its judge artifact (evaluate.judge), whose win rate joins
    the round's entry; `diagnostics`: per round, what looks wrong in it (flows.diagnostics); `variant`: the
    campaign this run varies and its overrides (config VariantConfig), for `rebelflow compare`; `made_from`:
    the ids of every stage of the run, in order (what `up_to_date` compares with a re-run's plan)."""
    base_rows = store.read_rows(baseline_scored)
    if dialogues:
        start = evaluate_dialogues.summarise(evaluate_dialogues.compare(base_rows, base_rows))
    else:
        start = evaluate.summarise(*evaluate.compare(base_rows, base_rows))
    rounds = [_entry(0, start, baseline_scored)]
    for k, ref in evaluations:
        rounds.append(_entry(k, store.manifest(ref)["summary"], ref))
        if judged and k in judged:
            j = store.manifest(judged[k])["summary"]
            rounds[-1].update({key: j[key] for key in ("judge_win_rate", "judge_win_rate_by_turn", "judge_lc_win_rate")
                               if key in j})
            rounds[-1]["judge"] = j["judge"]
        if diagnostics and diagnostics.get(k):
            rounds[-1]["diagnostics"] = diagnostics[k]
    summary = {"campaign": campaign, "rounds": rounds, "made_from": made_from_key(store, made_from)}
    if variant:
        summary["variant"] = variant
    folder = store.root / "campaigns" / campaign
    folder.mkdir(parents=True, exist_ok=True)
    iterations = online_curve(store, online)
    if iterations:
        from rebelflow.ml.driver import curve  # torch: only for online campaigns

        summary["online"] = curve(iterations, ONLINE_KEYS, points=200)
        plot_online(iterations, folder / "online.png", campaign)
    else:  # an earlier online run of this campaign name
        (folder / "online.png").unlink(missing_ok=True)
    plot(rounds, folder / "summary.png", campaign)
    write_json_atomic(folder / "summary.json", summary)  # last: the plots it names are there
    return summary


SUMMARY_VERSION = 1  # bump when the summary's content changes: a re-run then writes it again


def made_from_key(store: Store, ids: list[str]) -> dict[str, Any]:
    """What a summary was made from: each stage's artifact and which making of it (an artifact made again
    keeps its id, not its `made`), and the code that made the summary."""
    return {"version": SUMMARY_VERSION, "rebelflow": library_versions().get("rebelflow"),
            "artifacts": [[i, store.manifest(store.find(i)).get("made")] for i in ids]}


def up_to_date(store: Store, campaign: str, artifacts: list[ArtifactRef], variant: dict[str, Any] | None) -> dict | None:
    """The campaign's summary when a re-run would change nothing: every stage's artifact complete in the
    store (a damaged one is not), and summary.json and its plots made from exactly these makings of them,
    as this variant, by this version of the summary and of rebelflow. None otherwise (the run goes through
    its flow)."""
    folder = store.root / "campaigns" / campaign
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    plots = ["summary.png", *(["online.png"] if summary.get("online") else [])]
    if (summary.get("variant") != variant or not all((folder / p).is_file() for p in plots)
            or not all(store.is_complete(a) for a in artifacts)):
        return None
    return summary if summary.get("made_from") == made_from_key(store, [a.id for a in artifacts]) else None


ONLINE_KEYS = ("round", "iteration", "step", "score", "reward", "kl", "penalty_rate", "loss", "value_loss", "val_score",
               "kl_coef")


def online_curve(store: Store, online: list[tuple[int, ArtifactRef]]) -> list[dict[str, Any]]:
    """Every iteration of the online rounds in order (their metrics.jsonl), numbered across the campaign
    (`step`) as well as within the round (`iteration`)."""
    rows: list[dict[str, Any]] = []
    for k, ref in online:
        path = store.path(ref) / "metrics.jsonl"
        if path.is_file():
            rows += [{**json.loads(line), "round": k, "step": len(rows) + i + 1}
                     for i, line in enumerate(path.read_text().splitlines())]
    return rows


def plot_online(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Score, validation score, KL, no-end-of-turn rate and loss (PPO: and value loss) per iteration, rounds
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=100)
    axes[0].plot(x, [r["score"] for r in rows], color="tab:blue", lw=1, label="score")
    val = [(r["step"], r["val_score"]) for r in rows if r.get("val_score") is not None]
    if val:
        axes[0].plot(*zip(*val, strict=True), "o-", color="tab:green", ms=3, label="validation score")
    axes[1].plot(x, [r["kl"] for r in rows], color="tab:red", lw=1, label="KL per response")
    axes[1].plot(x, [r["penalty_rate"] for r in rows], color="tab:purple", lw=1, label="no end-of-turn")
    axes[2].plot(x, [r.get("loss", float("nan")) for r in rows], color="tab:gray", lw=1, label="loss")
    if any("value_loss" in r for r in rows):  # PPO
        axes[2].plot(x, [r.get("value_loss", float("nan")) for r in rows], color="tab:orange", lw=1, label="value loss")
    starts = [r["step"] for r in rows if r["iteration"] == 1][1:]
    for ax in axes:
        for s in starts:
            ax.axvline(s - 0.5, color="black", lw=0.5, ls=":")
        ax.set_xlabel("iteration (all rounds)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: online iterations (dotted: a new round)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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


def judge_text(entry: dict[str, Any]) -> str:
    """A round's judge win rate for tables (with its per-turn figures for dialogues); '–' when not judged."""
    if entry.get("judge_win_rate") is None:
        return "–"
    turns = entry.get("judge_win_rate_by_turn")
    per_turn = f" ({by_turn_text({'win_rate_by_turn': turns})})" if turns else ""
    lc = f" (LC {entry['judge_lc_win_rate']:.3f})" if entry.get("judge_lc_win_rate") is not None else ""
    return f"{entry['judge_win_rate']:.3f}{per_turn}{lc}"


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
    judged = [(r["round"], r["judge_win_rate"]) for r in rounds if r.get("judge_win_rate") is not None]
    if judged:
        right.plot(*zip(*judged, strict=True), "^:", color="tab:green", label="judge win rate")
    right.set_ylim(0, 1)
    right.set_ylabel("win rate")
    lines = left.get_lines() + right.get_lines()
    left.legend(lines, [ln.get_label() for ln in lines], loc="lower right", fontsize=8)
    left.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def final_policy_note(policy, store_root) -> str | None:
    """Where a campaign's final policy is, and how to take it out of the store (None for an external model:
    no round trained)."""
    if policy is None or policy.external:
        return None
    folder = Store(store_root).path(policy) / "model"
    return (f"Final policy: {folder}  (a plain HF folder; copy it out with: rebelflow export {policy.id} DIR "
            f"--store {store_root})")


def read_summary(store: Store, campaign: str) -> dict[str, Any] | None:
    path = store.root / "campaigns" / campaign / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None
