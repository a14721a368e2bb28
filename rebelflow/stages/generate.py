"""generate: n sampled responses per prompt from the round's policy.

Consumes a prompts artifact and a policy model; produces one row per prompt: `prompt_id`, `messages`,
`responses` (n texts), `response_ids` (generated token ids, with the end-of-turn token when present),
`finish_reasons` ("stop" = ended with end-of-turn, "length" = hit max_new_tokens) and `seeds`.

Work is written in shards of `shard_size` prompts; an interrupted run resumes after its last finished
shard. Sample j of every prompt uses seed + 50*j, as the REBEL code seeds its vLLM samples.

Run alone: python -m rebelflow.stages.generate configs/demo-rebel.yaml --round 1
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

import pyarrow as pa
from tqdm.auto import tqdm

from rebelflow.config.campaign import VLLM_SPEED_ONLY, GenerateConfig
from rebelflow.engines import SamplingParams, load_engine
from rebelflow.stages.prompts import MESSAGES
from rebelflow.store.local import ArtifactWriter, Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "generate", 1, "dataset"
SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("responses", pa.list_(pa.string())),
        ("response_ids", pa.list_(pa.list_(pa.int32()))),
        ("finish_reasons", pa.list_(pa.string())),
        ("seeds", pa.list_(pa.int64())),
    ]
)


class Settings(GenerateConfig):
    UNHASHED: ClassVar[dict] = {"launcher": True, "vllm": VLLM_SPEED_ONLY}


def run(settings: Settings, prompts: ArtifactRef, policy: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [prompts, policy])
    if store.is_complete(ref, quarantine=True):
        return ref
    params = SamplingParams(settings.n, settings.temperature, settings.top_p, settings.max_new_tokens, settings.seed)
    engine = None
    started, new_tokens = time.time(), 0

    def sample(chunk: list[dict], advance: Callable[[int], object]) -> list[dict]:
        nonlocal engine, new_tokens
        engine = engine or load_engine(
            settings.engine, store.model_path(policy), settings.dtype, policy.revision, vllm=settings.vllm,
            chat_template=policy.chat_template,
        )
        out = []
        for b in range(0, len(chunk), settings.batch_size):
            batch = chunk[b : b + settings.batch_size]
            for row, comps in zip(batch, engine.generate([r["messages"] for r in batch], params), strict=True):
                new_tokens += sum(len(c.token_ids) for c in comps)
                out.append({
                    "prompt_id": row["prompt_id"],
                    "messages": row["messages"],
                    "responses": [c.text for c in comps],
                    "response_ids": [c.token_ids for c in comps],
                    "finish_reasons": [c.finish_reason for c in comps],
                    "seeds": [c.seed for c in comps],
                })
            advance(len(batch))
        return out

    with store.writer(ref, VERSION, hashed_settings(settings), [prompts, policy]) as w:
        rows = write_in_shards(w, store.read_rows(prompts), settings.shard_size, sample, SCHEMA,
                               f"generate ×{settings.n}", "prompt")
        w.finish(summary=_summary(rows, new_tokens, time.time() - started), card=_CARD)
    return ref


def write_in_shards(w: ArtifactWriter, rows: list[dict], shard_size: int,
                    make: Callable[[list[dict], Callable[[int], object]], list[dict]], schema: pa.Schema,
                    desc: str, unit: str) -> list[dict]:
    """The shard loop of the generation stages: `rows` in shards of `shard_size`; a shard already written
    (by an interrupted attempt) is kept, the others are made by `make(chunk, advance)`, which may report
    progress through `advance(n)`. Returns every output row, read back from the shards."""
    starts = range(0, len(rows), shard_size)
    bar = tqdm(total=len(rows), desc=desc, unit=unit)
    for index, start in enumerate(starts):
        chunk = rows[start : start + shard_size]
        if not w.has_shard("train", index):
            w.write_shard("train", index, make(chunk, bar.update), schema)
        bar.update(start + len(chunk) - bar.n)
    bar.close()
    return pa.concat_tables(w.read_shard("train", i) for i in range(len(starts))).to_pylist()


def _summary(rows: list[dict], new_tokens: int, seconds: float) -> dict:
    lengths = [len(ids) for r in rows for ids in r["response_ids"]]
    stops = sum(f == "stop" for r in rows for f in r["finish_reasons"])
    return {
        "prompts": len(rows),
        "responses": len(lengths),
        "mean response tokens": round(sum(lengths) / max(1, len(lengths)), 2),
        "ended with end-of-turn": round(stops / max(1, len(lengths)), 4),
        "new tokens per second (this run)": round(new_tokens / seconds, 1) if new_tokens else None,
        "sample": [
            {"prompt_id": r["prompt_id"], "prompt": r["messages"][-1]["content"], "response": r["responses"][0]}
            for r in rows[:5]
        ],
    }


_CARD = "Sampled responses of the round's policy, n per prompt, with token ids and finish reasons."

if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
