"""Rehearsal: run a GPU preset end to end on this machine's CPU before renting GPUs.

`rebelflow run PRESET --rehearse` (and plan, rm-train, rm-eval) loads the preset as it is, so its
own mistakes fail here as they would on the GPUs, then makes its rehearsal: the same stages, engines,
launchers (accelerate configs with DeepSpeed ZeRO, over gloo), reward backend and user kind, with each
model a tiny random model of the same family (the real tokenizer and chat template where a package ships
them), each Hub dataset a generated sample with the columns the preset reads, sizes scaled down, and
every substitution printed. Its artifacts go to a store of their own (<store>-rehearsal by default).
"""

from __future__ import annotations

import copy
from pathlib import Path

from rebelflow.config.campaign import RunConfig, StoreConfig
from rebelflow.config.loading import read_config, validate_config
from rebelflow.config.reward_model import RMConfig
from rebelflow.rehearsal import campaign, reward_model
from rebelflow.rehearsal.common import Rehearsal, rehearsal_store
from rebelflow.store.local import Store


def rehearsal_of(path: str | Path, overrides: list[str] = (), store: str | None = None,
                 root: type = RunConfig) -> tuple[RunConfig | RMConfig, list[str]]:
    """(the rehearsal's validated config, the substitutions made, one line each). The preset itself is
    validated first, so a mistake in it is reported as such (a `reward.artifact` is looked up in the
    rehearsal's store, where `rm-train --rehearse` puts it). Builds the tiny models and the generated data
    once, under a lock; later calls reuse them, so a rehearsal resumes like any run."""
    raw = read_config(path, overrides, None, root)
    configured = (raw.get("store") or {}).get("root") or StoreConfig().root
    target = Store(rehearsal_store(store, configured))
    raw.setdefault("store", {})["root"] = str(target.root)
    preset = validate_config(copy.deepcopy(raw), origin=str(path), root=root)
    r = Rehearsal(raw={}, store=target)
    with target.lock("rehearsal-inputs"):
        (campaign.rehearse if root is RunConfig else reward_model.rehearse)(preset, raw, r)
    r.notes.append(f"store: {configured} -> {target.root} (the rehearsal's own)")
    return validate_config(r.raw, origin=f"{path} (rehearsal)", root=root), r.notes
