"""Two runs of one campaign on one store at once — two terminals on one machine (one PREFECT_HOME), or two
machines sharing the store (a Prefect home each): both finish, every artifact is made once and verifies,
and no secret from the environment reaches the store, the Prefect database or the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from rebelflow.store.local import Store, forget_verifications
from tests.conftest import TINY

SECRETS = {"HF_TOKEN": "hf_secret_value_123", "WANDB_API_KEY": "wandb_secret_456", "OPENAI_API_KEY": "sk-secret-789"}


@pytest.mark.parametrize("homes", ["one Prefect home", "a Prefect home each"])
def test_two_runs_at_once_both_finish_and_the_store_verifies(tmp_path, prompts_file, homes):
    cfg = {
        "campaign": "twice", "policy": {"model": "tiny", "tiny": TINY.model_dump()},
        "prompts": {"source": str(prompts_file), "id_column": "id"},
        "reward": {"backend": "rule", "function": "rebelflow.rewards.examples:cheerful_words"},
        "generate": {"n": 2, "max_new_tokens": 6, "shard_size": 4},
        "prepare": {"validation_pairs": 2},
        "train": {"pairs_per_update": 4, "micro_batch_pairs": 2, "launcher": {"kind": "subprocess"}},
        "stop_after": "train",
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "rebelflow.cli", "run", str(tmp_path / "c.yaml"), "--store", str(tmp_path / "s")]
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                             env={**os.environ, **SECRETS,
                                  "PREFECT_HOME": str(tmp_path / f"prefect-{i if homes.endswith('each') else 0}")})
            for i in range(2)]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n=====\n".join(outputs)
    store = Store(tmp_path / "s")
    forget_verifications()
    made = sorted((tmp_path / "s" / "artifacts").iterdir())
    assert len(made) == 7  # tiny_model, prompts, generate, score, prepare, logprobs, train: each once
    for folder in made:
        ref = store.find(json.loads((folder / "manifest.json").read_text())["id"])
        assert store.verify(ref) is None
    assert not (tmp_path / "s" / "quarantine").exists()
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())  # store and Prefect homes
    assert not any(secret.encode() in stored for secret in SECRETS.values())
    assert not any(secret in out for secret in SECRETS.values() for out in outputs)
