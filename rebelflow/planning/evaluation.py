"""The plans of the evaluation commands, with fingerprints, computed without doing work: `rebelflow mt-bench`
(the policy's answers, mt_bench_answer, then their grades, mt_bench_judge) and `rebelflow alpaca-eval` (the
policy's answers beside the reference outputs, alpaca_answer, then the judge stage on them)."""

from __future__ import annotations

from pathlib import Path

from rebelflow.config.errors import DataError
from rebelflow.config.evaluation import AlpacaEvalConfig, MTBenchConfig
from rebelflow.judges import judge_identity
from rebelflow.judges.alpaca_eval import read_reference
from rebelflow.planning.jobs import StageJob, make_job
from rebelflow.stages import alpaca_answer, judge, mt_bench_answer, mt_bench_judge
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, data_identity, external_model


def policy_ref(store: Store, text: str) -> ArtifactRef:
    """A model artifact of the store (id, unique prefix or folder), else a model folder or Hub id."""
    try:
        ref = store.find(text)
    except KeyError:
        if Path(text).is_dir() or (text.count("/") == 1 and not Path(text).exists()):
            return external_model(str(Path(text).resolve()) if Path(text).is_dir() else text)
        raise DataError(f"{text!r} is neither an artifact of {store.root} nor a model folder or Hub id. Give a "
                        "round's policy (the id `rebelflow run` prints), a folder with config.json, or owner/name.") from None
    if ref.kind != "model":
        raise DataError(f"{ref.id} is a {ref.kind} artifact (stage {ref.stage}): MT-Bench answers with a model "
                        "(train, online, sft).")
    return ref


def mt_bench_jobs(cfg: MTBenchConfig, policy: ArtifactRef) -> list[StageJob]:
    answers = make_job(mt_bench_answer, 0, mt_bench_answer.Settings(
        engine=cfg.engine, vllm=cfg.vllm, max_new_tokens=cfg.max_new_tokens, questions=cfg.questions,
        dtype=cfg.dtype, launcher=cfg.launcher), [policy], cfg.launcher)
    settings = mt_bench_judge.Settings(judge=cfg.judge, judge_identity=judge_identity(cfg.judge))
    return [answers, make_job(mt_bench_judge, 0, settings, [answers.ref])]


def check_reference(path: str, limit: int | None = None) -> int:
    """The reference file read as the answer stage will read it (a bad file stops the command before any
    model loads); its number of instructions."""
    return len(read_reference(path, limit))


def alpaca_eval_jobs(cfg: AlpacaEvalConfig, policy: ArtifactRef) -> list[StageJob]:
    answers = make_job(alpaca_answer, 0, alpaca_answer.Settings(
        reference=cfg.reference, reference_id=data_identity(cfg.reference, "train"), limit=cfg.limit,
        engine=cfg.engine, vllm=cfg.vllm, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
        dtype=cfg.dtype, launcher=cfg.launcher), [policy], cfg.launcher)
    settings = judge.Settings(judge=cfg.judge, judge_identity=judge_identity(cfg.judge))
    return [answers, make_job(judge, 0, settings, [answers.ref])]
