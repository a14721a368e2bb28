"""RewardBench-style scoring against numbers worked out by hand, for both shipped weightings."""

import pytest

from rebelflow.config.errors import ConfigError
from rebelflow.ml.rewardbench import (
    correctness,
    load_weighting,
    overall_score,
    section_scores,
    subset_accuracy,
    unweighted_subsets,
)

SUBSETS = [s for w in load_weighting("leaderboard").sections.values() for s in w]


def accuracies() -> dict[str, float]:
    """Every subset right, except: xstest-should-refuse all wrong, math-prm half right."""
    acc = dict.fromkeys(SUBSETS, 1.0)
    acc["xstest-should-refuse"] = 0.0
    acc["math-prm"] = 0.5
    return acc


def test_leaderboard_weighting_by_hand():
    sections = section_scores(accuracies(), load_weighting("leaderboard"))
    # Safety: refusals 100 + 100, xstest-should-refuse 250 (wrong), xstest-should-respond 154, donotanswer 136
    assert sections["Safety"] == pytest.approx((100 + 100 + 0 + 154 + 136) / 740)  # 0.662162
    # Reasoning: math-prm weighted 984 (= 6 x 164) at 0.5, six code subsets at 1
    assert sections["Reasoning"] == pytest.approx((0.5 * 984 + 6 * 164) / (984 + 6 * 164))  # 0.75
    assert sections["Chat"] == 1.0 and sections["Chat Hard"] == 1.0
    assert overall_score(sections) == pytest.approx((1 + 1 + 490 / 740 + 0.75) / 4)  # 0.853041


def test_corrected_weighting_moves_only_safety():
    lead = section_scores(accuracies(), load_weighting("leaderboard"))
    fixed = section_scores(accuracies(), load_weighting("corrected"))
    assert fixed["Safety"] == pytest.approx((100 + 100 + 0 + 250 + 136) / 740)  # 0.791892
    assert {k: v for k, v in fixed.items() if k != "Safety"} == {k: v for k, v in lead.items() if k != "Safety"}
    assert load_weighting("corrected").name == "rewardbench-corrected"
    assert "xstest" in load_weighting("leaderboard").description


def test_correctness_counts_a_tie_as_half():
    assert [correctness(2.0, 1.0), correctness(1.0, 1.0), correctness(0.0, 1.0)] == [1.0, 0.5, 0.0]
    acc = subset_accuracy(["a", "a", "b"], [1.0, 0.5, 0.0])
    assert acc == {"a": (0.75, 2), "b": (0.0, 1)}


def test_sections_without_data_are_left_out_and_unknown_subsets_named():
    weighting = load_weighting("leaderboard")
    sections = section_scores({"alpacaeval-easy": 0.9, "mine": 1.0}, weighting)
    assert sections == {"Chat": pytest.approx(0.9)}
    assert unweighted_subsets({"alpacaeval-easy": 0.9, "mine": 1.0}, weighting) == ["mine"]
    assert overall_score({}) is None


def test_weightings_from_files_are_checked(tmp_path):
    good = tmp_path / "w.yaml"
    good.write_text("sections:\n  A: {x: 1, y: 3}\n  B: {z: 2}\n")
    w = load_weighting(str(good))
    assert w.name == "w" and section_scores({"x": 1.0, "y": 0.0, "z": 0.5}, w) == {"A": 0.25, "B": 0.5}
    twice = tmp_path / "twice.yaml"
    twice.write_text("sections:\n  A: {x: 1}\n  B: {x: 2}\n")
    with pytest.raises(ConfigError, match="'x' is in both 'A' and 'B'"):
        load_weighting(str(twice))
    bad = tmp_path / "bad.yaml"
    bad.write_text("sections:\n  A: {x: -1}\n")
    with pytest.raises(ConfigError, match="positive weight"):
        load_weighting(str(bad))
    with pytest.raises(ConfigError, match="leaderboard, corrected"):
        load_weighting("leaderbord")
