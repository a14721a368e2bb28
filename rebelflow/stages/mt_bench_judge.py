"""mt_bench_judge: MT-Bench's single-answer grading (1–10) of a policy's answers, turn by turn.

Consumes an mt_bench_answer artifact; produces one row per question and turn: `question_id`, `category`,
`turn`, `score` (None when the grader gave no readable rating after its tries) and the grader's `text`.
Turn 1 is graded on the first answer, turn 2 on the whole conversation; math, reasoning and coding against
the reference answers (rebelflow.judges.mt_bench). The summary has MT-Bench's table: `turn_1`, `turn_2`,
`average` (over every graded answer, as FastChat averages), `by_category` and `unjudged`. Every grading is
cached by content in `<store>/judgments/`.
"""

from __future__ import annotations

import statistics
from typing import ClassVar

import pyarrow as pa

from rebelflow.config.base import Section
from rebelflow.config.campaign import OPENAI_TRANSPORT
from rebelflow.config.errors import DataError
from rebelflow.config.judge import JudgeConfig
from rebelflow.judges.mt_bench import NEEDS_REFERENCE, TEMPERATURES, Grader, references
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "mt_bench_judge", 1, "dataset"
SCHEMA = pa.schema([("question_id", pa.int64()), ("category", pa.string()), ("turn", pa.int64()),
                    ("score", pa.float64()), ("text", pa.string())])


class Settings(Section):
    UNHASHED: ClassVar[dict] = {"judge": {"openai": OPENAI_TRANSPORT}}

    judge: JudgeConfig
    judge_identity: str


def run(settings: Settings, answers: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [answers])
    if store.is_complete(ref, quarantine=True):
        return ref
    rows = store.read_rows(answers)
    refs = references()
    items = [{"category": r["category"], "turns": r["turns"], "answers": r["answers"], "turn": turn,
              "reference": refs.get(r["question_id"]) if r["category"] in NEEDS_REFERENCE else None}
             for r in rows for turn in (1, 2)]
    grader = Grader(settings.judge, settings.judge_identity, store.root / "judgments")
    graded = grader.grade(items)
    out = [{"question_id": r["question_id"], "category": r["category"], "turn": turn, "score": score, "text": text}
           for (r, turn), (score, text) in zip(((r, t) for r in rows for t in (1, 2)), graded, strict=True)]
    if all(r["score"] is None for r in out):
        raise DataError(
            f"the grader ({settings.judge_identity}) gave no readable rating for {len(out)} answers "
            f"({settings.judge.attempts} tries each). Its last answer: {out[-1]['text'][:300]!r}. MT-Bench reads "
            "the rating from '[[N]]' (1 to 10), e.g. 'Rating: [[7]]'."
        )
    with store.writer(ref, VERSION, hashed_settings(settings), [answers]) as w:
        w.write_shard("train", 0, out, SCHEMA)
        w.finish(summary={**summarise(out), "judge": settings.judge_identity},
                 card="MT-Bench single-answer grades (1-10) of a policy's answers, per question and turn.")
    print(f"mt_bench_judge: {grader.calls} requests reached {settings.judge_identity} ({len(out)} answers; the rest "
          "were answered from the cache)", flush=True)
    return ref


def summarise(rows: list[dict]) -> dict:
    """MT-Bench's figures: the mean score of turn 1, of turn 2, of both (every graded answer), per category."""
    graded = [r for r in rows if r["score"] is not None]

    def mean(scores: list[float]) -> float | None:
        return round(statistics.fmean(scores), 4) if scores else None

    return {
        "turn_1": mean([r["score"] for r in graded if r["turn"] == 1]),
        "turn_2": mean([r["score"] for r in graded if r["turn"] == 2]),
        "average": mean([r["score"] for r in graded]),
        "by_category": {c: mean([r["score"] for r in graded if r["category"] == c])
                        for c in TEMPERATURES if any(r["category"] == c for r in rows)},
        "graded": len(graded),
        "unjudged": len(rows) - len(graded),
    }


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
