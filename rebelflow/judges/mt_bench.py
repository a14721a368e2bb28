"""MT-Bench (REFERENCE: "Evaluation as the papers report it"): the 80 two-turn questions, their reference
answers and FastChat's single-answer grading, shipped in rebelflow/data/mt_bench/ (Apache-2.0, see its
NOTICE.md).

FastChat answers each category at its own temperature (0 is greedy) and grades each turn 1–10 with the
`single-v1` prompts; math, reasoning and coding are graded against the reference answer (`single-math-v1`),
and turn 2 sees the whole conversation (the `-multi-turn` prompts). The rating is read from `[[N]]`
(FastChat also accepts `[N]`); an answer without one is asked again, then left unjudged, never guessed.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from rebelflow.config.judge import JudgeConfig
from rebelflow.judges import Judge, asker
from rebelflow.judges.prompts import mt_bench_prompts

Message = dict[str, str]

# FastChat's llm_judge/common.py: temperature per category; categories graded against a reference answer
TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
                "stem": 0.1, "humanities": 0.1}
NEEDS_REFERENCE = ("math", "reasoning", "coding")
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def _data(name: str) -> list[dict[str, Any]]:
    text = resources.files("rebelflow").joinpath(f"data/mt_bench/{name}").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@cache
def questions() -> tuple[dict[str, Any], ...]:
    """The 80 questions: question_id, category, turns (two user messages)."""
    return tuple(_data("question.jsonl"))


@cache
def references() -> dict[int, list[str]]:
    """GPT-4's reference answers (both turns) of the math, reasoning and coding questions, by question id."""
    return {r["question_id"]: r["choices"][0]["turns"] for r in _data("reference_answer.jsonl")}


def parse_rating(text: str) -> float | None:
    """The 1–10 rating in a grader's answer ("Rating: [[7]]"), as FastChat reads it; None when there is none
    or it lies outside 1–10."""
    found = RATING.search(text) or RATING_BACKUP.search(text)
    if not found:
        return None
    value = float(found.group(1))
    return value if 1 <= value <= 10 else None


def grading_messages(category: str, turns: list[str], answers: list[str], turn: int,
                     reference: list[str] | None) -> list[Message]:
    """FastChat's single-answer grading request for `turn` (1 or 2) of one question."""
    name = "single-math-v1" if category in NEEDS_REFERENCE and reference else "single-v1"
    fields: dict[str, str] = {}
    if turn == 1:
        fields = {"question": turns[0], "answer": answers[0]}
        if name == "single-math-v1":
            fields["ref_answer_1"] = reference[0]
    else:
        name += "-multi-turn"
        fields = {"question_1": turns[0], "question_2": turns[1], "answer_1": answers[0], "answer_2": answers[1]}
        if name.startswith("single-math"):
            fields |= {"ref_answer_1": reference[0], "ref_answer_2": reference[1]}
    prompt = mt_bench_prompts()[name]
    return [{"role": "system", "content": prompt["system_prompt"]},
            {"role": "user", "content": prompt["prompt_template"].format(**fields)}]


class Grader(Judge):
    """Grades answers 1–10 one at a time, with the judge's cache, retries and concurrency. An endpoint gets
    FastChat's request; a callable is called as fn(conversation, reference) — the conversation up to the
    graded answer, the reference answers (None outside math, reasoning, coding) — and returns the grader's
    text ("Rating: [[7]]") or the rating as a number."""

    def __init__(self, cfg: JudgeConfig, identity: str, cache_dir: Path):
        super().__init__(cfg, identity, cache_dir, ask=_grading_asker(cfg))

    def parse(self, text: str, logprobs: dict[str, float] | None) -> float | None:
        return parse_rating(text)

    def grade(self, items: list[dict[str, Any]]) -> list[tuple[float | None, str]]:
        """Each item: category, turns, answers, turn, reference. Returns (rating or None, text) per item."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        requests = [self.grading_request(**item) for item in items]
        workers = self.cfg.openai.concurrency if self.cfg.kind == "openai" else 1
        with ThreadPoolExecutor(workers) as pool:
            return list(tqdm(pool.map(lambda kv: self.answer(*kv), requests), total=len(requests), desc="grading",
                             unit="answer"))

    def grading_request(self, category: str, turns: list[str], answers: list[str], turn: int,
                        reference: list[str] | None) -> tuple[str, Any]:
        if self.cfg.kind == "callable":
            conversation = [m for q, a in zip(turns[:turn], answers[:turn], strict=True)
                            for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
            request: Any = {"conversation": conversation, "reference": reference[:turn] if reference else None}
        else:
            request = grading_messages(category, turns, answers, turn, reference)
        key = hashlib.sha256(json.dumps({"judge": self.identity, "format": "mt-bench-single", "request": request,
                                         "temperature": self.cfg.temperature, "max_new_tokens": self.cfg.max_new_tokens},
                                        sort_keys=True).encode()).hexdigest()
        return key, request


def _grading_asker(cfg: JudgeConfig):
    if cfg.kind != "callable":
        return asker(cfg.model_copy(update={"format": "pair"}))  # the whole answer, no logprobs
    from rebelflow.config.callables import load_callable

    fn = load_callable(cfg.function, "judge.function")

    def ask(request: dict) -> tuple[str, None]:
        got = fn(request["conversation"], request["reference"])
        return (f"Rating: [[{float(got):g}]]" if isinstance(got, numbers.Real) else str(got)), None

    return ask
