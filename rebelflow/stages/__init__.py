"""Stages: plain Python, no Prefect. Each module has `NAME`, `VERSION`, `KIND`, a `Settings` model (what
determines its output) and `run(settings, *inputs, store) -> ArtifactRef`, and runs alone as
`python -m rebelflow.stages.<name> CONFIG [--round K]` or, as the launcher calls it, `--job FILE`
(the command line is `rebelflow.running.stage_cli`; a stage module imports it only in its `__main__` block).

Bump a stage's VERSION when its output for the same settings and inputs changes, so that old cached
artifacts are not reused.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGE_MODULES = (
    "tiny_model", "prompts", "generate", "score", "prepare", "logprobs", "train", "evaluate", "sft",
    "generate_dialogues", "score_dialogues", "prepare_dialogues", "evaluate_dialogues",
    "preferences", "rm_train", "rm_eval",
)


def stage_module(name: str) -> ModuleType:
    if name not in STAGE_MODULES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_MODULES)}")
    return importlib.import_module(f"rebelflow.stages.{name}")
