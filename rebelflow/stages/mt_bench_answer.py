"""mt_bench_answer: a policy's answers to MT-Bench's two-turn questions, as FastChat makes them.

Consumes a policy (a model artifact or a model folder); produces one row per question: `question_id`,
`category`, `turns` (the two user messages), `answers` (the policy's replies; turn 2 sees turn 1's answer),
`finish_reasons` and `temperature` (FastChat's per category: 0.7 writing and roleplay, 0.1 stem and
humanities, greedy for extraction, math, coding and reasoning). One shard per category: an interrupted run
resumes after its last finished category.

Run it through `rebelflow mt-bench POLICY --judge …` (which grades the answers with mt_bench_judge).
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field
from tqdm.auto import tqdm

from rebelflow.config.base import Section
from rebelflow.config.campaign import VLLM_SPEED_ONLY, LauncherConfig
from rebelflow.config.engines import DTYPE, VLLMConfig
from rebelflow.engines import SamplingParams, load_engine
from rebelflow.judges.mt_bench import TEMPERATURES, questions
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "mt_bench_answer", 1, "dataset"
SCHEMA = pa.schema([
    ("question_id", pa.int64()), ("category", pa.string()), ("turns", pa.list_(pa.string())),
    ("answers", pa.list_(pa.string())), ("finish_reasons", pa.list_(pa.string())), ("temperature", pa.float64()),
])


class Settings(Section):
    UNHASHED: ClassVar[dict] = {"launcher": True, "vllm": VLLM_SPEED_ONLY}  # batches change sampled answers

    engine: Literal["hf", "vllm"] = "hf"
    vllm: VLLMConfig = VLLMConfig()
    max_new_tokens: int = Field(1024, ge=1, description="FastChat's default per turn")
    questions: int | None = Field(None, ge=1, description="only the first N questions (all 80 by default)")
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    dtype: DTYPE = "float32"
    launcher: LauncherConfig = LauncherConfig()


def selected(settings: Settings) -> list[dict]:
    chosen = list(questions())[: settings.questions]
    return [q for category in TEMPERATURES for q in chosen if q["category"] == category]  # grouped by category


def run(settings: Settings, policy: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [policy])
    if store.is_complete(ref, quarantine=True):
        return ref
    chosen = selected(settings)
    categories = [c for c in TEMPERATURES if any(q["category"] == c for q in chosen)]
    engine, started, tokens = None, time.time(), 0
    bar = tqdm(total=len(chosen), desc="MT-Bench answers", unit="question")
    with store.writer(ref, VERSION, hashed_settings(settings), [policy]) as w:
        for index, category in enumerate(categories):
            group = [q for q in chosen if q["category"] == category]
            if not w.has_shard("train", index):
                engine = engine or load_engine(settings.engine, store.model_path(policy), settings.dtype,
                                               policy.revision, vllm=settings.vllm, chat_template=policy.chat_template)
                rows, made = _answer(engine, group, TEMPERATURES[category], settings)
                tokens += made
                w.write_shard("train", index, rows, SCHEMA)
            bar.update(len(group))
        bar.close()
        rows = [r for i in range(len(categories)) for r in w.read_shard("train", i).to_pylist()]
        seconds = time.time() - started
        w.finish(summary={
            "questions": len(rows), "categories": categories,
            "turns ended with end-of-turn": round(sum(f == "stop" for r in rows for f in r["finish_reasons"])
                                                  / max(1, 2 * len(rows)), 4),
            "new tokens per second (this run)": round(tokens / seconds, 1) if tokens else None,
            "sample": [{"question": r["turns"][0][:200], "answer": r["answers"][0][:300]} for r in rows[:3]],
        }, card="A policy's answers to MT-Bench's questions (both turns), at FastChat's per-category temperatures.")
    return ref


def _answer(engine, group: list[dict], temperature: float, settings: Settings) -> tuple[list[dict], int]:
    """Both turns of every question of one category: turn 1, then turn 2 after turn 1's answer."""
    params = SamplingParams(1, temperature, 1.0, settings.max_new_tokens, settings.seed)
    answers: list[list] = [[] for _ in group]
    tokens = 0
    for turn in (0, 1):
        for b in range(0, len(group), settings.batch_size):
            batch = range(b, min(b + settings.batch_size, len(group)))
            conversations = [[m for t in range(turn + 1) for m in _turn(group[i], answers[i], t)] for i in batch]
            for i, comps in zip(batch, engine.generate(conversations, params), strict=True):
                answers[i].append(comps[0])
                tokens += len(comps[0].token_ids)
    rows = [{"question_id": q["question_id"], "category": q["category"], "turns": q["turns"],
             "answers": [c.text for c in a], "finish_reasons": [c.finish_reason for c in a], "temperature": temperature}
            for q, a in zip(group, answers, strict=True)]
    return rows, tokens


def _turn(question: dict, answers: list, t: int) -> list[dict[str, str]]:
    """The user's message of turn t, and the policy's answer to it when there is one already."""
    user = [{"role": "user", "content": question["turns"][t]}]
    return user + ([{"role": "assistant", "content": answers[t].text}] if t < len(answers) else [])


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
