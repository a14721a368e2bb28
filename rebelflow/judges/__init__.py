"""LLM judges of two answers (REFERENCE: "Evaluation as the papers report it").

A judgment compares two conversations that end in the answers being judged (one reply each, or whole
dialogues up to a turn). It is asked in both orders: in MT-Bench's pair format each order's verdict
([[A]], [[B]], [[C]] for a tie) gives the new policy 1, 0 or 0.5, and two verdicts that disagree make a tie;
in the preference format (AlpacaEval-style) each order gives the probability that the new policy's answer
is better (from the judge's logprobs of the two labels when it returns them, else its label), and the
outcome is their mean. A verdict that cannot be read is asked again (`attempts`), then counted as unjudged,
never guessed.

Every answer a judge gives is cached by content (the judge's identity, the format and the exact request),
in `<store>/judgments/`, so a re-run, or another stage that asks the same question, never pays twice.
Judges are an OpenAI-compatible endpoint (`vllm serve` of a local judge, or a hosted API) or a Python
callable `fn(a, b)` (a scripted judge for tests and demos) that returns the judge's text.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rebelflow.config.judge import JudgeConfig
from rebelflow.judges.prompts import judge_messages

Message = dict[str, str]
LABELS = {"A": 1.0, "B": 0.0, "C": 0.5}


@dataclass
class Judged:
    """One pair in both orders: the new policy's outcome (None when either order stayed unreadable) and
    each order's reading (the new answer shown first, then second) with the judge's texts."""

    outcome: float | None
    new_first: float | None
    new_second: float | None
    texts: tuple[str, str]


def parse_pair(text: str) -> float | None:
    """MT-Bench's pair verdict as the score of answer A (1 A, 0 B, 0.5 tie); None unless exactly one of
    [[A]], [[B]], [[C]] appears (a judge that names two has not decided)."""
    found = set(re.findall(r"\[\[([ABC])\]\]", text))
    return LABELS[found.pop()] if len(found) == 1 else None


def parse_preference(text: str, top_logprobs: dict[str, float] | None = None) -> float | None:
    """The probability that A is better: from the logprobs of the labels A and B at the first token when
    both are there, else 1 or 0 from the label the judge wrote (None for anything else)."""
    if top_logprobs:
        best: dict[str, float] = {}
        for token, lp in top_logprobs.items():
            label = token.strip()
            if label in ("A", "B"):
                best[label] = max(best.get(label, -math.inf), lp)
        if len(best) == 2:
            return 1.0 / (1.0 + math.exp(best["B"] - best["A"]))
    label = re.match(r"\s*([AB])(?![A-Za-z])", text)  # "A", "B.", "A) ..." — not "Assistant"
    return None if label is None else LABELS[label.group(1)]


class Judge:
    def __init__(self, cfg: JudgeConfig, identity: str, cache_dir: Path, ask: Callable | None = None):
        """`identity` names the judge in cache keys (the served model, or the callable's source hash).
        `ask(request) -> (text, top_logprobs)` answers one request; by default the configured endpoint or
        callable."""
        self.cfg, self.identity, self.cache = cfg, identity, cache_dir
        self.ask = ask or asker(cfg)
        self.calls = 0  # requests that reached the judge (not answered from the cache)
        self.lock = threading.Lock()

    def judge(self, pairs: list[tuple[list[Message], list[Message]]]) -> list[Judged]:
        """(new conversation, baseline conversation) pairs, each judged in both orders. Identical requests (the
        same pair twice, or two identical answers in either order) are asked once."""
        from tqdm.auto import tqdm

        requests = [self.request(a, b) for new, base in pairs for a, b in ((new, base), (base, new))]
        unique = {key: request for key, request in requests}
        workers = self.cfg.openai.concurrency if self.cfg.kind == "openai" else 1
        with ThreadPoolExecutor(workers) as pool:
            done = list(tqdm(pool.map(lambda kv: self.answer(*kv), unique.items()), total=len(unique),
                             desc="judging", unit="judgment"))
        scores = dict(zip(unique, done, strict=True))
        out = []
        for i in range(len(pairs)):
            (first, t1), (second, t2) = scores[requests[2 * i][0]], scores[requests[2 * i + 1][0]]
            new_second = None if second is None else 1.0 - second  # new was B
            out.append(Judged(combine(self.cfg.format, first, new_second), first, new_second, (t1, t2)))
        return out

    def request(self, a: list[Message], b: list[Message]) -> tuple[str, Any]:
        """The cache key and the request that asks the judge whether a (assistant A) is better than b."""
        request = {"format": self.cfg.format, "a": a, "b": b} if self.cfg.kind == "callable" else judge_messages(
            self.cfg.format, a, b)
        key = hashlib.sha256(json.dumps({"judge": self.identity, "format": self.cfg.format, "request": request,
                                         "temperature": self.cfg.temperature, "max_new_tokens": self.cfg.max_new_tokens},
                                        sort_keys=True).encode()).hexdigest()
        return key, request

    def answer(self, key: str, request: Any) -> tuple[float | None, str]:
        """The score of A against B and the judge's text. A readable answer is cached as the judge gave it
        (text and logprobs) and read again through the parser, so a parser fix applies to cached answers."""
        path = self.cache / key[:2] / f"{key}.json"
        try:
            got = json.loads(path.read_text())
            score = self.parse(got["text"], got.get("logprobs"))
            if score is not None:
                return score, got["text"]
        except (OSError, ValueError, KeyError):
            pass  # not cached, or a damaged entry: ask again
        text = ""
        for _ in range(self.cfg.attempts):
            with self.lock:
                self.calls += 1
            text, logprobs = self.ask(request)
            score = self.parse(text, logprobs)
            if score is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
                with os.fdopen(fd, "w") as fh:
                    json.dump({"text": text, "logprobs": logprobs}, fh)
                os.replace(tmp, path)
                return score, text
        return None, text

    def parse(self, text: str, logprobs: dict[str, float] | None) -> float | None:
        return parse_pair(text) if self.cfg.format == "pair" else parse_preference(text, logprobs)


def combine(fmt: str, first: float | None, second: float | None) -> float | None:
    """Both orders' scores of the new answer: pair verdicts that disagree are a tie; preferences average."""
    if first is None or second is None:
        return None
    if fmt == "pair":
        return first if first == second else 0.5
    return (first + second) / 2


def asker(cfg: JudgeConfig) -> Callable:
    if cfg.kind == "callable":
        from rebelflow.config.callables import load_callable

        fn = load_callable(cfg.function, "evaluate.judge.function")

        def ask(request: dict) -> tuple[str, dict | None]:
            got = fn(request["a"], request["b"])
            if not isinstance(got, numbers.Real):
                return str(got), None
            if cfg.format == "pair":  # a probability that A is better, as a verdict
                return ("[[A]]" if got > 0.5 else "[[B]]" if got < 0.5 else "[[C]]"), None
            return ("A" if got >= 0.5 else "B"), {"A": math.log(max(got, 1e-12)), "B": math.log(max(1 - got, 1e-12))}

        return ask
    from rebelflow.engines.openai_compat import OpenAIEngine

    engine = OpenAIEngine(cfg.openai)
    tokens = 1 if cfg.format == "preference" else cfg.max_new_tokens
    return lambda messages: engine.chat(messages, cfg.temperature, tokens, top_logprobs=5 if cfg.format == "preference" else 0)


def judge_identity(cfg: JudgeConfig) -> str:
    """What makes two judges' verdicts differ: the served model, or the callable's name and source."""
    if cfg.kind == "callable":
        from rebelflow.config.callables import source_hash

        return f"callable:{source_hash(cfg.function, 'evaluate.judge.function')}"
    return f"openai:{cfg.openai.model}"
