"""Every kind of damage to a finished artifact is detected, the artifact is moved to quarantine/ (never
deleted), and the stage makes it again byte-identical."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from rebelflow.planning.campaign import Baseline, round_plan
from rebelflow.running.launch import launch
from rebelflow.store import local
from tests.conftest import make_config
from tests.reliability.test_kill_resume import data_hashes
from tests.stages.helpers import run_round


def flip_a_byte(folder):
    shard = sorted((folder / "data").glob("*.parquet"))[0]
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))


def truncate_weights(folder):
    weights = folder / "model" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)


def delete_manifest(folder):
    (folder / "manifest.json").unlink()


def edit_manifest(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["rows"] -= 1
    (folder / "manifest.json").write_text(json.dumps(manifest))


def edit_a_setting(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["settings"]["seed"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))


DAMAGE = {  # what is damaged → (the step whose artifact, the damage)
    "data bytes": ("generate", flip_a_byte),
    "truncated weights": ("train", truncate_weights),
    "deleted manifest": ("score", delete_manifest),
    "edited manifest rows": ("prepare", edit_manifest),
    "edited manifest setting": ("prepare", edit_a_setting),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_policy):
    """One round through training; each test works on a copy of the store."""
    from tests.conftest import write_prompts

    root = tmp_path_factory.mktemp("damage")
    prompts = write_prompts(root / "prompts.jsonl", [{"id": f"p{i}", "prompt": f"Tell me about {t}."}
                                                       for i, t in enumerate("cats rain music bread trains snow".split())])
    cfg = make_config(root, prompts, prepare={"validation_pairs": 1, "max_prompt_tokens": 128, "max_response_tokens": 64})
    _, refs, policy = run_round(cfg, tiny_policy, upto="train")
    return root, cfg, refs, policy


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_detected_quarantined_and_remade_identically(made, tmp_path, kind):
    root, cfg, refs, policy = made
    shutil.copytree(root / "store", tmp_path / "store")
    store = local.Store(tmp_path / "store")
    step, damage = DAMAGE[kind]
    ref = refs[step]
    expected = data_hashes(store, ref)
    damage(store.path(ref))
    local.forget_verifications()
    assert store.verify(ref) is not None, f"{kind} was not detected"
    assert not store.is_complete(ref, quarantine=True)
    assert [p.name for p in (store.root / "quarantine").iterdir()][0].startswith(ref.id)  # kept, out of the way
    plan = round_plan(cfg.model_copy(update={"stop_after": "train"}), 1, policy, Baseline())
    assert launch(getattr(plan, step), store, emit=lambda line: None) == ref
    assert data_hashes(store, ref) == expected


def test_a_remade_input_makes_what_was_built_on_it_stale(made, tmp_path):
    root, cfg, refs, _ = made
    shutil.copytree(root / "store", tmp_path / "store")
    store = local.Store(tmp_path / "store")
    assert store.is_complete(refs["logprobs"])
    manifest = json.loads((store.path(refs["prepare"]) / "manifest.json").read_text())
    manifest["made"] = "another-making"
    local.write_manifest(store.path(refs["prepare"]) / "manifest.json", manifest)
    local.forget_verifications()
    assert "was made again after it" in store.verify(refs["logprobs"])
