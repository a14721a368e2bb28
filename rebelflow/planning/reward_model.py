"""The reward-model plan: the stage jobs of `rebelflow rm-train` and `rebelflow rm-eval`, with fingerprints,
computed without doing work (like planning.campaign for campaigns).

    rm-train   [tiny_model] → preferences → rm_train → heldout_eval (rm_eval on the held-out split)
               → eval_preferences → rm_eval (the RewardBench-format set, when eval.data is set)
    rm-eval    eval_preferences → rm_eval, of eval.reward if set, else of the model rm-train makes from
               this config (which must already be trained)
"""

from __future__ import annotations

from rebelflow.config.campaign import RewardConfig
from rebelflow.config.errors import DataError
from rebelflow.config.reward_model import PreferenceDataConfig, RMConfig
from rebelflow.ml.rewardbench import load_weighting
from rebelflow.ml.tracking import run_info
from rebelflow.planning.jobs import StageJob, make_job
from rebelflow.rewards import reward_identity
from rebelflow.stages import preferences, rm_eval, rm_train, tiny_model
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, data_identity, external_model


def rm_jobs(cfg: RMConfig, train: bool = True, store: Store | None = None) -> list[StageJob]:
    """rm-train's jobs (train=True) or rm-eval's. rm-eval of the model rm-train makes needs `store`, to
    check that it has been trained."""
    jobs = _train_jobs(cfg) if cfg.data is not None else []
    if train:
        if cfg.data is None:
            raise DataError("rm-train needs data: preference pairs to train on (data.source).")
        model = jobs[-1].ref
        if cfg.data.heldout_fraction > 0:
            pairs = next(j.ref for j in jobs if j.name == "preferences")
            jobs.append(_eval_job(cfg, "heldout", pairs, model, name="heldout_eval"))
    else:
        if cfg.eval.data is None:
            raise DataError("rm-eval needs eval.data: a RewardBench-format set (prompt, chosen, rejected, subset).")
        model = None if cfg.eval.reward is not None else jobs[-1].ref
        if model is not None and (store is None or not store.is_complete(model)):
            raise DataError(
                f"the reward model this config trains ({model.id}) is not in the store yet. Run "
                "`rebelflow rm-train CONFIG` first (same --store), or set eval.reward to evaluate another model."
            )
        jobs = []
    if cfg.eval.data is not None:
        bench = _preferences_job(cfg.eval.data, evaluation=True, name="eval_preferences")
        jobs += [bench, _eval_job(cfg, "test", bench.ref, model, name="rm_eval")]
    return jobs


def _train_jobs(cfg: RMConfig) -> list[StageJob]:
    jobs = []
    if cfg.model == "tiny":
        jobs.append(make_job(tiny_model, 0, cfg.tiny, []))
        base = jobs[-1].ref
    else:
        base = external_model(cfg.model, cfg.revision)
    jobs.append(_preferences_job(cfg.data, evaluation=False, name="preferences"))
    settings = rm_train.Settings(**cfg.train.model_dump(),
                                 tracking=run_info(cfg.tracking, cfg.store.root, cfg.name, f"{cfg.name}-rm_train", "rm_train"))
    jobs.append(make_job(rm_train, 0, settings, [jobs[-1].ref, base], cfg.train.launcher))
    return jobs


def _preferences_job(data: PreferenceDataConfig, evaluation: bool, name: str) -> StageJob:
    settings = preferences.Settings(**data.model_dump(), data_identity=data_identity(data.source, data.split),
                                    evaluation=evaluation)
    return make_job(preferences, 0, settings, [], name=name)


def _eval_job(cfg: RMConfig, split: str, pairs: ArtifactRef, model: ArtifactRef | None, name: str) -> StageJob:
    reward: RewardConfig | None = cfg.eval.reward if model is None else None
    settings = rm_eval.Settings(
        split=split,
        reward=reward,
        reward_identity=reward_identity(reward) if reward is not None else None,
        weighting=load_weighting(cfg.eval.weights).as_dict(),
        batch_size=cfg.eval.batch_size,
        max_length=cfg.train.max_length,
        dtype=cfg.train.dtype,
    )
    inputs = [pairs] if model is None else [pairs, model]
    return make_job(rm_eval, 0, settings, inputs, cfg.eval.launcher, name=name)
