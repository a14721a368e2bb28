"""Round diagnostics: each check fires on the numbers that make it, names them and the fix, and stays
quiet on a sane round."""

from __future__ import annotations

from rebelflow.flows.diagnostics import diagnose

SANE = {
    "generate": {"summary": {"ended with end-of-turn": 0.9}},
    "prepare": {"summary": {"prompts": 40, "filters": {"no end-of-turn": 3, "identical pair": 1}, "mean reward gap": 0.5},
                "settings": {"max_prompt_tokens": 128, "max_response_tokens": 64}},
    "train": {"summary": {"last val_sign_agreement": 0.8}, "settings": {"eta": 2.0}},
    "evaluate": {"summary": {"win_rate": 0.7}},
}


def with_(stage: str, **summary) -> dict:
    out = {k: {**v, "summary": dict(v["summary"])} for k, v in SANE.items()}
    out.setdefault(stage, {"summary": {}})["summary"].update(summary)
    return out


def test_a_sane_round_has_no_diagnostics():
    assert diagnose(SANE) == []


def test_each_check_names_what_it_saw_and_what_to_try():
    [tiny] = diagnose(with_("prepare", **{"mean reward gap": 0.001}))
    assert "train.eta (2.0) × mean reward gap (0.001) = 0.002" in tiny and "Raise train.eta to about 1e+03" in tiny
    [flat] = diagnose(with_("prepare", **{"mean reward gap": 0.0}))
    assert "mean reward gap of the pairs is 0.0" in flat and "never tells a pair's two responses apart" in flat
    assert "1e+" not in flat
    [huge] = diagnose(with_("prepare", **{"mean reward gap": 40.0}))
    assert "huge" in huge and "Lower train.eta" in huge
    [length] = diagnose(with_("generate", **{"ended with end-of-turn": 0.2}))
    assert "only 20% of the sampled replies" in length and "generate.max_new_tokens" in length
    [dropped] = diagnose(with_("prepare", filters={"prompt too long": 30}))
    assert "'prompt too long' filter dropped 30 of 40 prompts" in dropped and "prepare.max_prompt_tokens (128)" in dropped
    [signs] = diagnose(with_("train", **{"last val_sign_agreement": 0.5}))
    assert "only 50% of the time" in signs and "train.lr" in signs
    [worse] = diagnose(with_("evaluate", win_rate=0.3))
    assert "win rate 0.30" in worse


def test_an_online_round_whose_kl_runs_away():
    curve = [{"kl": k} for k in (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0)]
    [kl] = diagnose({"online": {"summary": {"curve": curve}, "settings": {"online": {"kl_coef": 0.01}}}})
    assert "grew from 0.2 to 8 per reply" in kl and "Raise online.kl_coef (now 0.01)" in kl
    steady = [{"kl": 0.5} for _ in range(8)]
    assert diagnose({"online": {"summary": {"curve": steady}, "settings": {"online": {"kl_coef": 0.05}}}}) == []
