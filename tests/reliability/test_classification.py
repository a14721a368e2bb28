"""A failure is classified once, the same for every launcher: a bug in a stage is StageFailed (never
retried) naming the step, the round, the exception class and the log with the full traceback, whether
the stage ran in this process or in a subprocess; a user error keeps its class and gains the step's name."""

from __future__ import annotations

import pytest

from rebelflow.config.errors import DataError, StageFailed
from rebelflow.planning.campaign import Baseline, round_plan
from rebelflow.running.launch import launch
from rebelflow.tasks import transient_only
from tests.conftest import make_config
from tests.stages.helpers import run_round


@pytest.mark.parametrize("kind", ["inprocess", "subprocess"])
def test_a_bug_in_a_stage_fails_the_same_way_in_and_out_of_process(tmp_path, prompts_file, tiny_policy, kind):
    from prefect.states import Failed

    broken = tmp_path / "broken-classifier"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cfg = make_config(tmp_path, prompts_file, reward={"backend": "classifier", "function": None, "model": str(broken)},
                      score={"launcher": {"kind": kind}})
    store, _, policy = run_round(cfg, tiny_policy, upto="generate")
    job = round_plan(cfg.model_copy(update={"stop_after": "score"}), 1, policy, Baseline()).score
    with pytest.raises(StageFailed, match=r"^score round 1 failed: \w+Error: .*Full (traceback|log): .*\.log") as caught:
        launch(job, store, emit=lambda line: None)
    assert transient_only(None, None, Failed(data=caught.value)) is False
    log = (store.root / "logs" / f"{job.ref.id}.log").read_text()
    assert "Traceback (most recent call last)" in log


def test_a_user_error_keeps_its_class_and_names_the_step(tmp_path, prompts_file, tiny_policy):
    cfg = make_config(tmp_path, prompts_file, prepare={"max_response_tokens": 1})
    with pytest.raises(DataError, match=r"^prepare round 1: 0 of 12 prompts gave a pair"):
        run_round(cfg, tiny_policy, upto="prepare")
