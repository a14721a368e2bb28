"""alpaca_answer: a policy's answers to an AlpacaEval-style instruction set, beside the reference outputs.

Consumes a policy (a model artifact or a model folder) and reads a reference file: AlpacaEval's JSON (a list of
{instruction, output, …}, e.g. alpaca_eval_gpt4_baseline.json) or JSONL with the same fields, optionally
with a per-instruction `instruction_difficulty` (AlpacaEval's leaderboard term of the LC GLM). Produces one
row per instruction in the judge stage's shape: `prompt_id`, `messages` (the instruction as the user's
message), `new_response` (the policy's), `baseline_response` (the reference output), `difficulty`. The judge
stage then judges each pair in both orders; in the preference format its summary has the raw and the
length-controlled win rate (judges.length_control).

Run it through `rebelflow alpaca-eval POLICY --reference FILE --judge …`.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from rebelflow.config.base import Section
from rebelflow.config.campaign import VLLM_SPEED_ONLY, LauncherConfig
from rebelflow.config.engines import DTYPE, VLLMConfig
from rebelflow.engines import SamplingParams, load_engine
from rebelflow.judges.alpaca_eval import read_reference
from rebelflow.stages.generate import write_in_shards
from rebelflow.stages.prompts import MESSAGES
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings

NAME, VERSION, KIND = "alpaca_answer", 1, "dataset"
SCHEMA = pa.schema([("prompt_id", pa.string()), ("messages", MESSAGES), ("new_response", pa.string()),
                    ("baseline_response", pa.string()), ("finish_reason", pa.string()), ("difficulty", pa.float64())])


class Settings(Section):
    # batches and shards change sampled answers (one seed per engine call); where the file is does not
    UNHASHED: ClassVar[dict] = {"launcher": True, "vllm": VLLM_SPEED_ONLY, "reference": True}

    reference: str = Field(..., description="the reference outputs file (where it is; its content is reference_id)")
    reference_id: str = Field(..., description="the file's content hash (store.refs.data_identity)")
    limit: int | None = Field(None, ge=1, description="only the first N instructions")
    engine: Literal["hf", "vllm"] = "hf"
    vllm: VLLMConfig = VLLMConfig()
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(2048, ge=1)
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    shard_size: int = Field(128, ge=1)
    dtype: DTYPE = "float32"
    launcher: LauncherConfig = LauncherConfig()


def run(settings: Settings, policy: ArtifactRef, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [policy])
    if store.is_complete(ref, quarantine=True):
        return ref
    reference = [{"prompt_id": str(i), "messages": [{"role": "user", "content": r["instruction"]}],
                  "baseline_response": str(r["output"]), "difficulty": r.get("instruction_difficulty")}
                 for i, r in enumerate(read_reference(settings.reference, settings.limit))]
    params = SamplingParams(1, settings.temperature, settings.top_p, settings.max_new_tokens, settings.seed)
    engine, started, tokens = None, time.time(), 0

    def answer(chunk: list[dict], advance) -> list[dict]:
        nonlocal engine, tokens
        engine = engine or load_engine(settings.engine, store.model_path(policy), settings.dtype, policy.revision,
                                       vllm=settings.vllm, chat_template=policy.chat_template)
        out = []
        for b in range(0, len(chunk), settings.batch_size):
            batch = chunk[b:b + settings.batch_size]
            for row, comps in zip(batch, engine.generate([r["messages"] for r in batch], params), strict=True):
                tokens += len(comps[0].token_ids)
                out.append({**row, "new_response": comps[0].text, "finish_reason": comps[0].finish_reason})
            advance(len(batch))
        return out

    with store.writer(ref, VERSION, hashed_settings(settings), [policy]) as w:
        rows = write_in_shards(w, reference, settings.shard_size, answer, SCHEMA, "AlpacaEval answers", "instruction")
        seconds = time.time() - started
        w.finish(summary={
            "instructions": len(rows),
            "mean characters (policy)": round(sum(len(r["new_response"]) for r in rows) / len(rows), 1),
            "mean characters (reference)": round(sum(len(r["baseline_response"]) for r in rows) / len(rows), 1),
            "ended with end-of-turn": round(sum(r["finish_reason"] == "stop" for r in rows) / len(rows), 4),
            "new tokens per second (this run)": round(tokens / seconds, 1) if tokens else None,
        }, card="A policy's answers to an AlpacaEval-style instruction set, beside the reference outputs.")
    return ref


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
