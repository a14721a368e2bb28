"""RewardBench-style scoring, pure: per-example correctness, per-subset accuracy, section scores as
weighted means of subset accuracies, and the overall score as the mean of the sections.

The weights are data (YAML files: `sections: {Section: {subset: weight}}`), so the leaderboard's
published weighting, the corrected xstest counts, or a user's own table can be chosen by name or path.
Two ship with rebelflow in rebelflow/data/weights/:
  - `leaderboard`: RewardBench v1 as published (math-prm's 447 rows weighted as 984 to equal the six code
    subsets; xstest-should-refuse 250 and xstest-should-respond 154, the reverse of the rows held);
  - `corrected`: the same with xstest-should-refuse 154 and xstest-should-respond 250.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from rebelflow.config.errors import ConfigError

SHIPPED = {"leaderboard": "rewardbench-leaderboard.yaml", "corrected": "rewardbench-corrected.yaml"}


@dataclass(frozen=True)
class Weighting:
    name: str
    description: str
    sections: dict[str, dict[str, float]]  # section -> {subset: weight}

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "sections": self.sections}


def load_weighting(spec: str) -> Weighting:
    """A shipped weighting by name (leaderboard, corrected) or a YAML file of the same shape."""
    if spec in SHIPPED:
        text = resources.files("rebelflow").joinpath(f"data/weights/{SHIPPED[spec]}").read_text()
        where = f"the shipped {spec!r} weighting"
    elif Path(spec).is_file():
        text, where = Path(spec).read_text(), spec
    else:
        raise ConfigError(
            f"[eval.weights] {spec!r} is neither a shipped weighting ({', '.join(SHIPPED)}) nor a YAML file. "
            "Give one of those names or the path of a file with sections: {Section: {subset: weight}}."
        )
    raw = yaml.safe_load(text) or {}
    sections = raw.get("sections")
    if not isinstance(sections, dict) or not sections or not all(
        isinstance(subs, dict) and subs and all(isinstance(w, (int, float)) and w > 0 for w in subs.values())
        for subs in sections.values()
    ):
        raise ConfigError(
            f"{where}: `sections` must map each section name to {{subset: positive weight}}, e.g. "
            "sections: {Chat: {alpacaeval-easy: 100}}."
        )
    seen: dict[str, str] = {}
    for section, subs in sections.items():
        for subset in subs:
            if subset in seen:
                raise ConfigError(f"{where}: subset {subset!r} is in both {seen[subset]!r} and {section!r}.")
            seen[subset] = section
    name = str(raw.get("name") or Path(spec).stem)
    return Weighting(name, str(raw.get("description", "")), {s: dict(v) for s, v in sections.items()})


def correctness(chosen_reward: float, rejected_reward: float) -> float:
    """1 when the chosen response scores higher, 0.5 on a tie, 0 otherwise."""
    if chosen_reward == rejected_reward:
        return 0.5
    return 1.0 if chosen_reward > rejected_reward else 0.0


def subset_accuracy(subsets: list[str], correct: list[float]) -> dict[str, tuple[float, int]]:
    """{subset: (mean correctness, examples)}."""
    groups: dict[str, list[float]] = defaultdict(list)
    for subset, value in zip(subsets, correct, strict=True):
        groups[subset].append(value)
    return {s: (sum(v) / len(v), len(v)) for s, v in sorted(groups.items())}


def section_scores(accuracy: dict[str, float], weighting: Weighting) -> dict[str, float]:
    """Each section's weighted mean of the accuracies of its subsets present in `accuracy`; a section
    with none of its subsets present is left out."""
    out = {}
    for section, weights in weighting.sections.items():
        present = {s: w for s, w in weights.items() if s in accuracy}
        if present:
            out[section] = sum(accuracy[s] * w for s, w in present.items()) / sum(present.values())
    return out


def overall_score(sections: dict[str, float]) -> float | None:
    """The plain mean of the section scores (RewardBench v1's headline number)."""
    return sum(sections.values()) / len(sections) if sections else None


def unweighted_subsets(accuracy: dict[str, float], weighting: Weighting) -> list[str]:
    """Subsets of the data that no section of the weighting names (they count in no section)."""
    known = {s for weights in weighting.sections.values() for s in weights}
    return sorted(s for s in accuracy if s not in known)
