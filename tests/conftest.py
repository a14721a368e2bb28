"""Shared fixtures. PREFECT_HOME points at a fresh folder before anything imports Prefect, so tests
never touch a user's Prefect database or result storage."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="rebelflow-test-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from rebelflow.config.campaign import TinyModelConfig  # noqa: E402
from rebelflow.config.loading import validate_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = TinyModelConfig(vocab_size=600, hidden_size=32, layers=2, heads=2, seed=0)


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> str:
    from rebelflow.ml.tiny import build_policy

    return str(build_policy(tmp_path_factory.mktemp("policy"), TINY))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> str:
    from rebelflow.ml.tiny import build_classifier

    return str(build_classifier(tmp_path_factory.mktemp("classifier"), TINY))


def write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    topics = ["cats", "rain", "music", "bread", "trains", "snow", "tea", "stars", "boats", "honey", "birds", "books"]
    return write_prompts(tmp_path / "prompts.jsonl", [{"id": f"p{i}", "prompt": f"Tell me about {t}."} for i, t in enumerate(topics)])


def make_config(tmp_path: Path, prompts_path: Path, **sections):
    """A small valid RunConfig dict → RunConfig; keyword arguments replace or extend whole sections."""
    raw = {
        "campaign": "test",
        "policy": {"model": "tiny", "tiny": TINY.model_dump()},
        "prompts": {"source": str(prompts_path), "id_column": "id"},
        "reward": {"backend": "rule", "function": "rebelflow.rewards.examples:cheerful_words"},
        "generate": {"n": 3, "max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0, "batch_size": 4, "shard_size": 4},
        "score": {"shard_size": 4},
        "prepare": {"max_prompt_tokens": 128, "max_response_tokens": 64, "validation_pairs": 2},
        "train": {"eta": 1.0, "lr": 1e-3, "pairs_per_update": 4, "micro_batch_pairs": 2, "eval_every": 1,
                  "checkpoint_every": 1, "launcher": {"kind": "inprocess"}},
        "evaluate": {"prompts": {"source": str(prompts_path), "id_column": "id", "per_round": 4}, "n": 2,
                     "max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0, "batch_size": 4},
        "store": {"root": str(tmp_path / "store")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return validate_config(raw)
