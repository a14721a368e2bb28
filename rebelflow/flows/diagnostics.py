"""What looks wrong in a round, in words, with what to try: read from the summaries and settings of the
round's artifacts after it ran. Each check names the numbers it saw, so a user can judge it. They go into
the round's entry of `summary.json` (`diagnostics`) and are printed after the round table."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rebelflow.stages.prepare import FIXES

SMALL_TARGET, LARGE_TARGET = 0.05, 50.0  # η × mean reward gap: the log-ratio difference the loss asks for
SIGN_FLOOR = 0.55  # validation sign agreement at or below this is near chance
LENGTH_LIMIT = 0.5  # below this share of replies ending with end-of-turn, most hit max_new_tokens
DROP_SHARE = 0.5  # one prepare filter dropping more than this share of prompts


def diagnose(manifests: dict[str, dict[str, Any]]) -> list[str]:
    """Messages for one round from its stages' manifests ({step name: manifest}); none when all looks sane."""
    out: list[str] = []
    get = {name: m.get("summary", {}) for name, m in manifests.items()}
    settings = {name: m.get("settings", {}) for name, m in manifests.items()}
    out += _lengths(get.get("generate", {}))
    out += _filters(get.get("prepare", {}), settings.get("prepare", {}))
    out += _targets(get.get("prepare", {}), settings.get("train", {}))
    out += _signs(get.get("train", {}), settings.get("train", {}))
    out += _kl(get.get("online", {}), settings.get("online", {}))
    rebel = (settings.get("train", {}).get("objective", "rebel") == "rebel"
             and (settings.get("online", {}).get("online") or {}).get("objective", "rebel") == "rebel")
    out += _evaluation(get.get("evaluate", {}), "train.lr or train.eta" if rebel else "train.lr")
    return out


def _lengths(generate: dict) -> list[str]:
    ended = generate.get("ended with end-of-turn")
    if ended is None or ended >= LENGTH_LIMIT:
        return []
    return [f"only {ended:.0%} of the sampled replies ended with end-of-turn: most hit generate.max_new_tokens. "
            "Raise generate.max_new_tokens, or let prepare keep only ended replies (prepare.require_eot: true) so "
            "training favours answers that finish."]


def _filters(prepare: dict, settings: dict) -> list[str]:
    prompts, out = prepare.get("prompts") or 0, []
    for reason, n in (prepare.get("filters") or {}).items():
        if prompts and n > DROP_SHARE * prompts:
            fix = FIXES.get(reason, "").format(s=SimpleNamespace(**settings)) if settings else FIXES.get(reason, "")
            out.append(f"prepare's '{reason}' filter dropped {n} of {prompts} prompts. {fix}".strip())
    return out


def _targets(prepare: dict, train: dict) -> list[str]:
    gap, eta = prepare.get("mean reward gap"), train.get("eta")
    if gap is None or eta is None:
        return []
    target = eta * gap
    if gap <= 1e-9:
        return [f"the mean reward gap of the pairs is {gap} (rounded to 4 decimals): the reward (almost) never tells "
                "a pair's two responses apart, so the regression targets are (nearly) zero and there is nothing to "
                "learn. Score a few replies by hand to see that the reward tells them apart, and sample more varied "
                "replies (a higher generate.temperature, generate.n or generate.max_new_tokens); if its differences "
                "are real but tiny, scale the reward or raise train.eta until η × the gap is about 1."]
    if target < SMALL_TARGET:
        return [f"the regression targets are tiny: train.eta ({eta}) × mean reward gap ({gap}) = {target:.3g}, so "
                f"training barely moves the policy. Raise train.eta to about {1 / max(gap, 1e-12):.3g} (targets of "
                "about 1), or use a reward with a larger spread."]
    if target > LARGE_TARGET:
        return [f"the regression targets are huge: train.eta ({eta}) × mean reward gap ({gap}) = {target:.3g}; "
                f"log-ratio differences that large push the policy far from where it sampled. Lower train.eta to "
                f"about {1 / max(gap, 1e-12):.3g}, or lower train.lr."]
    return []


def _signs(train: dict, settings: dict) -> list[str]:
    agreement = train.get("last val_sign_agreement")
    if agreement is None or agreement > SIGN_FLOOR:
        return []
    scale = ("check train.beta" if settings.get("objective") in ("dpo", "ipo")
             else "check train.eta against the reward's scale")
    return [f"after training, the held-out pairs' log-ratio differences agree in sign with their reward "
            f"differences only {agreement:.0%} of the time (chance is 50%): the policy did not learn the pairs. "
            f"Raise train.lr or train.epochs, {scale}, and score a few pairs by hand to see that the reward ranks "
            "them as you would."]


def _kl(online: dict, settings: dict) -> list[str]:
    curve = online.get("curve") or []
    kls = [p["kl"] for p in curve if p.get("kl") is not None]
    if len(kls) < 4:
        return []
    early, last = max(kls[len(kls) // 4], 1e-9), kls[-1]
    coef = (settings.get("online") or {}).get("kl_coef")
    if last > 1.0 and last > 5 * early:
        return [f"the KL against the reference grew from {early:.3g} to {last:.3g} per reply over the round: the "
                f"policy is running away from its reference. Raise online.kl_coef (now {coef}), or lower train.lr."]
    return []


def _evaluation(evaluate: dict, knobs: str) -> list[str]:
    win = evaluate.get("win_rate")
    if win is None or win >= 0.5:
        return []
    return [f"the round's policy loses to the starting policy on the held-out prompts (win rate {win:.2f}): "
            f"training moved it the wrong way. Check the reward on a few replies by hand, and try a smaller {knobs}."]
