"""judge: the round's evaluation judged by an LLM judge (or a scripted one), beside the reward-model win rate.

Consumes the round's evaluate (or evaluate_dialogues) artifact: per held-out prompt the new policy's and the
baseline's reply (or whole dialogues). Each pair is judged in both orders (rebelflow.judges): one row per
prompt — per prompt and turn for dialogues, the conversations cut after that turn's reply — with the new
policy's outcome (1 win, 0.5 tie, 0 loss; a probability in the preference format), each order's reading
and the judge's texts. The summary has `judge_win_rate` (ties count half), wins/ties/losses, the pairs the
judge left unreadable, and for dialogues `judge_win_rate_by_turn` (REFUEL's table; the win rate is their
mean). The judge's answers are cached by content in `<store>/judgments/`, so re-running pays nothing.

Run alone: python -m rebelflow.stages.judge configs/demo-rebel.yaml --round 1
"""

from __future__ import annotations

import math
import statistics
from typing import ClassVar

import pyarrow as pa

from rebelflow.config.base import Section
from rebelflow.config.campaign import OPENAI_TRANSPORT
from rebelflow.config.errors import DataError
from rebelflow.config.judge import JudgeConfig
from rebelflow.judges import Judge
from rebelflow.ml.chat import turn_positions
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "judge", 2, "dataset"
SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("turn", pa.int64()), ("outcome", pa.float64()),
    ("new_first", pa.float64()), ("new_second", pa.float64()),
    ("new_first_text", pa.string()), ("new_second_text", pa.string()),
    ("new_chars", pa.int64()), ("baseline_chars", pa.int64()),  # the judged answers' lengths (LC win rate)
])


class Settings(Section):
    UNHASHED: ClassVar[dict] = {"judge": {"openai": OPENAI_TRANSPORT}}  # where the judge is served is not what it says

    judge: JudgeConfig
    judge_identity: str  # the served model, or the callable's source hash


def pairs_of(rows: list[dict]) -> list[tuple[str, int, list[dict], list[dict]]]:
    """(prompt id, turn, new conversation, baseline conversation) of every judgment: one per prompt for
    single replies; per turn for dialogues, each conversation cut after its reply at that turn (a turn one
    of them did not reach is not judged)."""
    out = []
    for r in rows:
        if "new_dialogue" not in r:
            context = list(r["messages"])
            out.append((r["prompt_id"], 1, [*context, {"role": "assistant", "content": r["new_response"]}],
                        [*context, {"role": "assistant", "content": r["baseline_response"]}]))
            continue
        start = len(r["messages"])
        new, base = turn_positions(r["new_dialogue"], "assistant"), turn_positions(r["baseline_dialogue"], "assistant")
        for t in range(min(len(new), len(base))):  # turns numbered as evaluate_dialogues numbers them
            if new[t] >= start:  # a reply in the prompt's own context is the same in both: nothing to judge
                out.append((r["prompt_id"], t + 1, r["new_dialogue"][: new[t] + 1], r["baseline_dialogue"][: base[t] + 1]))
    return out


def run(settings: Settings, evaluation: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [evaluation])
    if store.is_complete(ref, quarantine=True):
        return ref
    evaluated = store.read_rows(evaluation)
    items = pairs_of(evaluated)
    if not items:
        raise DataError("the evaluation has no pair of replies to judge.")
    judge = Judge(settings.judge, settings.judge_identity, store.root / "judgments")
    judged = judge.judge([(new, base) for _, _, new, base in items])
    rows = [{"prompt_id": pid, "turn": turn, "outcome": j.outcome, "new_first": j.new_first, "new_second": j.new_second,
             "new_first_text": j.texts[0], "new_second_text": j.texts[1], "new_chars": len(new[-1]["content"]),
             "baseline_chars": len(base[-1]["content"])}
            for (pid, turn, new, base), j in zip(items, judged, strict=True)]
    if all(r["outcome"] is None for r in rows):
        raise DataError(
            f"the judge ({settings.judge_identity}) gave no readable verdict in {len(rows)} pairs "
            f"({settings.judge.attempts} tries each). Its last answer: {rows[-1]['new_second_text'][:300]!r}. "
            f"Check that it answers in the {settings.judge.format!r} format (pair: [[A]], [[B]] or [[C]]; "
            "preference: A or B)."
        )
    with store.writer(ref, VERSION, hashed_settings(settings), [evaluation]) as w:
        w.write_shard("train", 0, rows, SCHEMA)
        summary = summarise(rows)
        if settings.judge.format == "preference":  # an instruction set's difficulty term, when it has one
            summary |= length_controlled(rows, {r["prompt_id"]: r.get("difficulty") for r in evaluated})
        w.finish(summary={**summary, "judge": settings.judge_identity},
                 card="The new policy's replies against the baseline's, judged in both orders.")
    print(f"judge: {judge.calls} requests reached {settings.judge_identity} ({len(rows)} pairs in both orders; the rest "
          "were answered from the cache)", flush=True)
    return ref


def summarise(rows: list[dict]) -> dict:
    judged = [r["outcome"] for r in rows if r["outcome"] is not None]
    turns = sorted({r["turn"] for r in rows})
    by_turn = []
    for t in turns:
        got = [r["outcome"] for r in rows if r["turn"] == t and r["outcome"] is not None]
        by_turn.append(round(statistics.fmean(got), 5) if got else None)
    valid = [w for w in by_turn if w is not None]
    out = {
        "judged": len(judged),
        "unjudged": len(rows) - len(judged),
        "judge_win_rate": round(statistics.fmean(valid), 5),
        "judge_wins": sum(o > 0.5 for o in judged),
        "judge_ties": sum(o == 0.5 for o in judged),
        "judge_losses": sum(o < 0.5 for o in judged),
    }
    if turns != [1]:
        out["judge_win_rate_by_turn"] = by_turn
    return out


def length_controlled(rows: list[dict], difficulty: dict[str, float | None] | None = None) -> dict:
    """AlpacaEval 2.0's length-controlled win rate of single replies judged in the preference format
    (judges.length_control), with the instruction-difficulty term when every judged prompt has a difficulty
    (AlpacaEval's own instructions; a round's held-out prompts have none). Nothing for dialogues or fewer than
    10 judged prompts."""
    from rebelflow.judges.length_control import lc_win_rate

    judged = [r for r in rows if r["outcome"] is not None]
    if len(judged) < 10 or any(r["turn"] != 1 for r in rows):
        return {}
    known = [(difficulty or {}).get(r["prompt_id"]) for r in judged] if difficulty else [None]
    usable = all(isinstance(d, int | float) and math.isfinite(d) for d in known)
    try:
        got = lc_win_rate([r["outcome"] for r in judged], [r["new_chars"] for r in judged],
                          [r["baseline_chars"] for r in judged], known if usable else None)
    except Exception as exc:  # the raw win rate stands; the judging is not lost to a failed fit
        return {"judge_lc_note": f"no length-controlled win rate: the GLM fit failed ({type(exc).__name__}: {exc})"}
    out = {"judge_lc_win_rate": round(got["lc_win_rate"], 5), "judge_lc_length_weight": round(got["length_weight"], 4)}
    if "difficulty_weight" in got:
        out["judge_lc_difficulty_weight"] = round(got["difficulty_weight"], 4)
    return out


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
