"""The campaign plan: every stage job of every round with its fingerprint, computed without doing work.

`rebelflow plan`, the flows and `python -m rebelflow.stages.<name> CONFIG` all build jobs here, so the
three agree on what an artifact's fingerprint is. A round comes back as a `RoundPlan` of named steps,
which the round flow calls in order. A campaign is:

    round 0   tiny_model (if policy.model is "tiny") → sft (if configured) = the starting policy;
              eval_prompts → eval_generate → eval_score of the starting policy (the baseline, once)
    round k   prompts → generate → score → prepare → logprobs → train
              → eval_generate → eval_score (the new policy) → evaluate (new against baseline)
    online    prompts → online (the round's iterations in one resident stage) → eval_generate → …

Round k's trained policy is round k+1's policy; the starting policy stays the evaluation baseline.
With a `dialogue` section (REFUEL) generate, score, prepare and evaluate are their multi-turn versions
(generate_dialogues, …) under the same job names; logprobs and train are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rebelflow.config.campaign import RunConfig
from rebelflow.config.errors import RebelflowError
from rebelflow.judges import judge_identity
from rebelflow.ml.tracking import run_info
from rebelflow.planning.environments import hardware_key
from rebelflow.planning.jobs import StageJob, make_job
from rebelflow.rewards import reward_identity
from rebelflow.stages import (
    evaluate,
    evaluate_dialogues,
    generate,
    generate_dialogues,
    judge,
    logprobs,
    online,
    prepare,
    prepare_dialogues,
    prompts,
    score,
    score_dialogues,
    sft,
    tiny_model,
    train,
)
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, data_identity, external_model
from rebelflow.users import user_identity


@dataclass
class Baseline:
    """Round 0: the jobs that make the starting policy and the baseline's evaluation samples."""

    jobs: list[StageJob] = field(default_factory=list)
    policy: ArtifactRef | None = None
    eval_prompts: ArtifactRef | None = None
    eval_scored: ArtifactRef | None = None


def baseline(cfg: RunConfig) -> Baseline:
    out = Baseline()
    if cfg.policy.model == "tiny":
        out.jobs.append(make_job(tiny_model, 0, cfg.policy.tiny, []))
        out.policy = out.jobs[-1].ref
    else:
        out.policy = external_model(cfg.policy.model, cfg.policy.revision, cfg.policy.chat_template)
    if cfg.sft is not None:
        settings = sft.Settings(**cfg.sft.model_dump(), data_identity=data_identity(cfg.sft.data, cfg.sft.split),
                                tracking=run_info(cfg.tracking, cfg.store.root, cfg.campaign, f"{cfg.campaign}-sft", "sft"))
        out.jobs.append(make_job(sft, 0, settings, [out.policy], cfg.sft.launcher))
        out.policy = out.jobs[-1].ref
    if "evaluate" in cfg.stages():
        settings = prompts.Settings.from_config(cfg.evaluate.prompts, 1, turns_column(cfg))
        job = make_job(prompts, 0, settings, [], name="eval_prompts")
        out.jobs.append(job)
        out.eval_prompts = job.ref
        samples, scored = _eval_samples(cfg, 0, out.eval_prompts, out.policy)
        out.jobs += [samples, scored]
        out.eval_scored = scored.ref
    return out


@dataclass
class RoundPlan:
    """Round k as named steps, in the order the algorithm runs them (the multi-turn stages under the same
    names); a step past `stop_after` is None."""

    k: int
    prompts: StageJob
    online: StageJob | None = None  # an online round: iterations of sample → score → regress, one stage
    generate: StageJob | None = None  # n samples per prompt (or two branched dialogues) from the policy
    score: StageJob | None = None  # a reward per response (per turn prefix for dialogues)
    prepare: StageJob | None = None  # best against worst, tokenized with loss masks
    logprobs: StageJob | None = None  # π_old of every pair, from the trainer's own forward pass
    train: StageJob | None = None  # the REBEL regression: the next policy
    eval_generate: StageJob | None = None  # the new policy on the held-out prompts
    eval_score: StageJob | None = None
    evaluate: StageJob | None = None  # the new policy against the baseline
    judge: StageJob | None = None  # the same pairs judged by an LLM judge (evaluate.judge)

    STEPS: ClassVar[tuple[str, ...]] = (
        "prompts", "online", "generate", "score", "prepare", "logprobs", "train", "eval_generate", "eval_score", "evaluate",
        "judge",
    )

    def jobs(self) -> list[StageJob]:
        return [job for job in (getattr(self, step) for step in self.STEPS) if job is not None]

    @property
    def policy(self) -> ArtifactRef | None:
        """The policy this round hands to the next: its train (or online) artifact."""
        trained = self.online or self.train
        return None if trained is None else trained.ref


def round_plan(cfg: RunConfig, k: int, policy: ArtifactRef, base: Baseline) -> RoundPlan:
    """Round k's steps up to `stop_after`, starting from `policy`."""
    wanted, multi = cfg.stages(), cfg.dialogue is not None
    r = RoundPlan(k, prompts=make_job(prompts, k, prompts.Settings.from_config(cfg.prompts, k, turns_column(cfg)), []))
    if cfg.online is not None:
        initial = [base.policy] if base.policy is not None and base.policy != policy else []
        validation = [base.eval_prompts] if base.eval_prompts is not None else []
        r.online = make_job(online, k, _online_settings(cfg, k), [r.prompts.ref, policy, *initial, *validation],
                            cfg.train.launcher)
        if "evaluate" in wanted:
            _evaluation(cfg, r, k, base, r.online.ref)
        return r
    if "generate" in wanted:
        module, settings = (generate_dialogues, _dialogue_settings(cfg, cfg.generate, True)) if multi else (
            generate, generate.Settings(**cfg.generate.model_dump()))
        r.generate = make_job(module, k, settings, [r.prompts.ref, policy], cfg.generate.launcher, name="generate")
    if "score" in wanted:
        r.score = make_job(score_dialogues if multi else score, k, _score_settings(cfg), [r.generate.ref],
                           cfg.score.launcher, name="score")
    if "prepare" in wanted:
        r.prepare = make_job(prepare_dialogues if multi else prepare, k, prepare.Settings(**cfg.prepare.model_dump()),
                             [r.score.ref, policy], cfg.prepare.launcher, name="prepare")
    if "logprobs" in wanted and cfg.train.needs_logprobs:
        reference = base.policy if cfg.train.reference == "initial" else policy  # DPO/IPO only (validated)
        r.logprobs = make_job(logprobs, k, _logprobs_settings(cfg), [r.prepare.ref, reference], cfg.logprobs.launcher)
    if "train" in wanted:
        pairs = r.logprobs.ref if cfg.train.needs_logprobs else r.prepare.ref
        r.train = make_job(train, k, _train_settings(cfg, k), [pairs, policy], cfg.train.launcher)
    if "evaluate" in wanted:
        _evaluation(cfg, r, k, base, r.train.ref)
    return r


def _evaluation(cfg: RunConfig, r: RoundPlan, k: int, base: Baseline, trained: ArtifactRef) -> None:
    """The round's policy on the held-out prompts, against the baseline."""
    r.eval_generate, r.eval_score = _eval_samples(cfg, k, base.eval_prompts, trained)
    r.evaluate = make_job(evaluate_dialogues if cfg.dialogue is not None else evaluate, k, evaluate.Settings(),
                          [r.eval_score.ref, base.eval_scored], name="evaluate")
    if cfg.evaluate.judge is not None:
        settings = judge.Settings(judge=cfg.evaluate.judge, judge_identity=judge_identity(cfg.evaluate.judge))
        r.judge = make_job(judge, k, settings, [r.evaluate.ref])


def _online_settings(cfg: RunConfig, k: int) -> online.Settings:
    from rebelflow.ml.online_loop import updates_per_iteration

    t, per_round = cfg.train, cfg.online.iterations * updates_per_iteration(cfg.online)
    return online.Settings(
        online=cfg.online, reward=cfg.reward, reward_identity=reward_identity(cfg.reward), eta=t.eta, lr=t.lr,
        betas=t.betas, eps=t.eps, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        micro_batch_pairs=t.micro_batch_pairs, warmup_ratio=t.warmup_ratio, trainable=t.trainable, lora=t.lora, dtype=t.dtype,
        attn_implementation=cfg.logprobs.attn_implementation, temperature=cfg.generate.temperature,
        top_p=cfg.generate.top_p, max_new_tokens=cfg.generate.max_new_tokens, batch_size=cfg.generate.batch_size,
        engine=cfg.generate.engine,
        **({"vllm": cfg.generate.vllm, "generate_dtype": cfg.generate.dtype} if cfg.generate.engine == "vllm" else {}),
        total_updates=cfg.rounds * per_round, first_update=(k - 1) * per_round, seed=t.seed,
        processes=t.launcher.processes(), max_invalid_fraction=cfg.score.max_invalid_fraction,
        dialogue=_dialogue_settings(cfg, cfg.generate, True) if cfg.dialogue is not None else None,
        tracking=run_info(cfg.tracking, cfg.store.root, cfg.campaign, f"{cfg.campaign}-r{k}-online", "online"),
    )


def name_variant(cfg: RunConfig, base: RunConfig | None, overrides: list[str]) -> RunConfig:
    """`cfg` (the config under `overrides`) as a variant of `base` (the same file without them) when they
    change a fingerprint of a round both plan — a run with more rounds, in another store or with another
    launcher stays the campaign unless that changes its results (online rounds' schedules and process
    counts do). A variant is named after its overrides (config VariantConfig) unless --set campaign named
    it. No base (the file alone does not load) counts as changed."""
    from rebelflow.config.campaign import VariantConfig

    if not overrides:
        return cfg
    if base is not None:
        rounds = min(cfg.rounds, base.rounds)
        try:
            theirs = [j.ref.id for j in campaign_jobs(base) if j.round <= rounds]
        except RebelflowError:  # the file alone does not plan (the overrides fix it): changed
            theirs = None
        if [j.ref.id for j in campaign_jobs(cfg) if j.round <= rounds] == theirs:
            return cfg
    of = base.campaign if base is not None else cfg.campaign
    variant = VariantConfig.from_overrides(of, overrides)
    if variant is None:
        return cfg
    name = cfg.campaign if base is not None and cfg.campaign != base.campaign else variant.name()
    return cfg.model_copy(update={"campaign": name, "variant": variant})


def campaign_jobs(cfg: RunConfig) -> list[StageJob]:
    """Every job of the campaign in order: round 0, then each round's steps."""
    return campaign_plan(cfg)[0]


def campaign_plan(cfg: RunConfig) -> tuple[list[StageJob], ArtifactRef | None]:
    """Every job of the campaign in order, and the policy it ends with (as `flows.campaign` hands it on)."""
    base = baseline(cfg)
    jobs, policy = list(base.jobs), base.policy
    for k in range(1, cfg.rounds + 1):
        step = round_plan(cfg, k, policy, base)
        jobs += step.jobs()
        policy = step.policy or policy
    return jobs, policy


def _eval_samples(cfg: RunConfig, k: int, eval_prompts: ArtifactRef, policy: ArtifactRef) -> tuple[StageJob, StageJob]:
    """Sample and score `policy` on the held-out prompts with the evaluation settings (same seeds always);
    for dialogues, one unbranched dialogue per prompt with the same simulated user."""
    e = cfg.evaluate
    if cfg.dialogue is not None:
        module, settings = generate_dialogues, _dialogue_settings(cfg, e, False)
    else:
        module, settings = generate, generate.Settings(
            engine=cfg.generate.engine, vllm=cfg.generate.vllm, n=e.n, temperature=e.temperature, top_p=e.top_p,
            max_new_tokens=e.max_new_tokens, seed=e.seed, batch_size=e.batch_size,
            shard_size=cfg.generate.shard_size, dtype=cfg.generate.dtype,
        )
    gen = make_job(module, k, settings, [eval_prompts, policy], e.launcher, name="eval_generate")
    scorer = score_dialogues if cfg.dialogue is not None else score
    return gen, make_job(scorer, k, _score_settings(cfg), [gen.ref], cfg.score.launcher, name="eval_score")


def _train_settings(cfg: RunConfig, k: int) -> train.Settings:
    return train.Settings(
        **cfg.train.model_dump(),
        temperature=_reference_temperature(cfg),
        attn_implementation=cfg.logprobs.attn_implementation,
        tracking=run_info(cfg.tracking, cfg.store.root, cfg.campaign, f"{cfg.campaign}-r{k}-train", "train"),
    )


def _score_settings(cfg: RunConfig) -> score.Settings:
    return score.Settings(reward=cfg.reward, reward_identity=reward_identity(cfg.reward), shard_size=cfg.score.shard_size,
                          max_invalid_fraction=cfg.score.max_invalid_fraction)


def _dialogue_settings(cfg: RunConfig, sampling, branching: bool) -> generate_dialogues.Settings:
    """Multi-turn generation settings from the dialogue section and a sampling section (generate or evaluate)."""
    d = cfg.dialogue
    return generate_dialogues.Settings(
        engine=cfg.generate.engine, vllm=cfg.generate.vllm, temperature=sampling.temperature, top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens, seed=sampling.seed, batch_size=sampling.batch_size,
        shard_size=cfg.generate.shard_size, dtype=cfg.generate.dtype, turns=d.turns, horizon=d.horizon,
        branch=d.branch, dialogue_seed=d.seed, branching=branching, user=d.user, user_identity=user_identity(d.user),
    )


def turns_column(cfg: RunConfig) -> str | None:
    user = cfg.dialogue.user if cfg.dialogue is not None else None
    return user.turns_column if user is not None and user.kind == "dataset" else None


def _reference_temperature(cfg: RunConfig) -> float:
    """REBEL's log-ratios are those of the sampling policy, softmax(logits / temperature), as in its code; DPO
    and IPO use the model's own distribution (temperature 1), as they are defined."""
    return 1.0 if cfg.train.objective in ("dpo", "ipo") else cfg.generate.temperature


def _logprobs_settings(cfg: RunConfig) -> logprobs.Settings:
    lp = cfg.logprobs
    return logprobs.Settings(
        **lp.model_dump(), temperature=_reference_temperature(cfg),
        hardware=hardware_key(lp.launcher, lp.dtype, lp.attn_implementation),
    )


def plan_status(cfg: RunConfig) -> list[dict]:
    """Per job: round, stage, fingerprint and `cached` (complete, verified, inputs unchanged) or
    `pending`. A stage downstream of a pending one is pending: it will be made again from the new input."""
    store = Store(cfg.store.root)
    pending: set[str] = set()
    out = []
    for j in campaign_jobs(cfg):
        if any(r.id in pending for r in j.inputs) or not store.is_complete(j.ref):
            pending.add(j.ref.id)
        status = "pending" if j.ref.id in pending else "cached"
        row = {"round": j.round, "stage": j.name, "fingerprint": j.ref.id, "status": status}
        if j.name == "online":
            row["note"] = online_note(cfg, store.manifest(j.ref)["summary"] if status == "cached" else None)
        out.append(row)
    return out


def online_note(cfg: RunConfig, summary: dict | None) -> str:
    """What an online round will do, or (made) how its curves went from first to last iteration."""
    from rebelflow.ml.online_loop import updates_per_iteration

    o = cfg.online
    if summary is None or not summary.get("curve"):
        n = o.samples_per_prompt
        kind = "2 dialogues branched at turn h" if cfg.dialogue is not None else f"{n} sample{'s' * (n != 1)}"
        return (f"{o.iterations} iterations: {o.prompts_per_iteration} prompts × {kind}, "
                f"{updates_per_iteration(o)} {'PPO ' * (o.objective == 'ppo')}updates each")
    return curve_text(summary)


def curve_text(summary: dict) -> str:
    """A finished online round's curves in one line (`plan`, `history`)."""
    return f"{summary['iterations']} iterations: " + online_text(summary["curve"])


def online_text(rows: list[dict]) -> str:
    """One line that says how an online stretch went: the first → last value of each curve."""
    parts = []
    for key, label in (("score", "score"), ("kl", "KL"), ("penalty_rate", "no-end"), ("val_score", "val"),
                       ("value_loss", "value loss")):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            parts.append(f"{label} {values[0]:.3g}→{values[-1]:.3g}")
    return " · ".join(parts)
