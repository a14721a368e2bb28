"""A stage's peak memory, as its manifest records it: measured from the stage's start in the flow's
process (the launcher resets the peak), over a stage process's life otherwise."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from rebelflow.config.campaign import Section
from rebelflow.store.local import Store
from rebelflow.store.refs import artifact_ref
from rebelflow.store.resources import peak_rss_mib, reset_peak_rss


class Settings(Section):
    size: int = 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resetting the peak needs Linux's clear_refs")
def test_the_peak_follows_an_allocation_and_a_reset_starts_it_afresh():
    reset_peak_rss()
    base = peak_rss_mib()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert peak_rss_mib() >= base + 60
    del block
    reset_peak_rss()
    assert peak_rss_mib() < base + 30  # the freed block no longer counts


def test_a_finished_artifact_records_the_peak_of_its_making(tmp_path):
    store = Store(tmp_path)
    ref = artifact_ref("prompts", 1, "dataset", Settings(), [])
    with store.writer(ref, 1, Settings().model_dump(), []) as writer:
        writer.write_shard("train", 0, [{"x": 1}], None)
        writer.finish({"rows": 1})
    resources = store.manifest(ref)["resources"]
    assert 10 < resources["peak_rss_mib"] < 1e6
