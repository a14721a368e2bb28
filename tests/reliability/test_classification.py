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


def test_an_error_report_keeps_its_class_after_a_launchers_long_output(tmp_path):
    """A rank reports its error on a line a progress bar shares, then torch's elastic agent prints dozens of
    lines of its own (as a 2-process accelerate launch does): the failure still comes back as that class."""
    import subprocess
    import sys
    from collections import deque

    from rebelflow.config.errors import ConfigError
    from rebelflow.running.launch import _failure, _pump

    script = ("import sys\n"
              "print('score:   0%|          | 0/8 [00:00<?, ?row/s]rebelflow-error: ConfigError: [reward.model] "
              "the tokenizer has no pad token. Set reward.pad_token', flush=True)\n"
              "for i in range(80): print('ChildFailedError noise', i)\n"
              "sys.exit(1)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail, emitted = deque(maxlen=40), []
    with open(tmp_path / "stage.log", "w") as log:
        reports = _pump(proc, log, tail, emitted.append)
    error = _failure(proc.returncode, tail, tmp_path / "stage.log", reports)
    assert isinstance(error, ConfigError)
    assert str(error) == "[reward.model] the tokenizer has no pad token. Set reward.pad_token"
    assert not any("rebelflow-error" in line for line in emitted)  # reported once, by the run, not as a log line


# What a generate stage printed when vLLM's engine died (issue 18's crash, abridged): the stage itself only
# learns "the engine died"; its worker and engine core logged the cause ~90 lines earlier.
ENGINE_DEATH = """\
generate:  40%|####      | 2/5 [00:14<00:21, 7.1s/shard]
(Worker pid=28190) ERROR 12-02 01:07:29 [multiproc_executor.py:1063] WorkerProc hit an exception.
(Worker pid=28190) ERROR 12-02 01:07:29 [multiproc_executor.py:1063] Traceback (most recent call last):
(Worker pid=28190) ERROR 12-02 01:07:29 [multiproc_executor.py:1063]   File "gpu_model_runner.py", line 3502, in _bookkeeping_sync
(Worker pid=28190) ERROR 12-02 01:07:29 [multiproc_executor.py:1063] RuntimeError: CPU Generator does not use offset
(EngineCore pid=28177) ERROR 12-02 01:07:29 [core.py:1512] EngineCore encountered a fatal error.
(EngineCore pid=28177) ERROR 12-02 01:07:29 [core.py:1512] RuntimeError: Worker failed with error 'CPU Generator does not use offset', please check the stack trace above for the root cause
""" + "".join(f"(EngineCore pid=28177) ERROR 12-02 01:07:29 [core.py:1512]   frame {i}\n" for i in range(60)) + """\
rebelflow-error: StageFailed: EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.
"""


def test_a_dead_engine_is_reported_with_its_root_cause(tmp_path):
    import subprocess
    import sys
    from collections import deque

    from rebelflow.running.launch import _failure, _pump

    (tmp_path / "out.txt").write_text(ENGINE_DEATH)
    proc = subprocess.Popen([sys.executable, "-c", f"import sys; print(open({str(tmp_path / 'out.txt')!r}).read()); "
                             "sys.exit(1)"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(tmp_path / "stage.log", "w") as log:
        reports = _pump(proc, log, deque(maxlen=40), lambda line: None)
    error = _failure(proc.returncode, deque(), tmp_path / "stage.log", reports)
    assert isinstance(error, StageFailed)
    assert str(error).startswith("EngineDeadError: EngineCore encountered an issue.")
    assert "root cause: RuntimeError: CPU Generator does not use offset (logged by Worker)" in str(error)


def test_of_several_ranks_reports_the_user_error_wins_and_keeps_its_lines(tmp_path):
    """Rank 1 fails on bad data; rank 0 then fails on the lost peer: the user sees the data error, with its
    line breaks; a dotted exception name logged by a helper process counts as a root cause too."""
    from collections import deque

    from rebelflow.running.launch import Reports, _failure
    from rebelflow.running.stage_cli import one_line

    data_error = one_line(DataError("row 3: bad\nrow 9: bad"))
    reports = Reports(errors=["rebelflow-error: StageFailed: DistBackendError: peer 1 closed the connection",
                              "rebelflow-error: DataError: " + data_error])
    error = _failure(3, deque(), tmp_path / "x.log", reports)
    assert isinstance(error, DataError) and str(error) == "row 3: bad\nrow 9: bad"
    from rebelflow.running.launch import LOGGED_ERROR

    line = "(Worker pid=3) ERROR 12-02 01:07:29 [x.py:1] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"
    assert LOGGED_ERROR.match(line)["error"].startswith("torch.OutOfMemoryError: CUDA out of memory")


@pytest.mark.parametrize("publishes", [True, False])
def test_a_crash_after_the_artifact_is_published_keeps_it_and_one_before_fails(tmp_path, prompts_file, tiny_policy,
                                                                               publishes):
    """The stage process aborts (exit 134, as gloo or an engine's shutdown may) after or instead of its
    work: with the verified artifact in the store the launch returns it with a warning; without, the step
    fails with the exit code and the log."""
    import os
    import sys

    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\n{'' if publishes else ': '}{sys.executable} \"$@\"\nexit 134\n")
    os.chmod(wrapper, 0o755)
    cfg = make_config(tmp_path, prompts_file, prepare={"launcher": {"kind": "subprocess", "python": str(wrapper)}})
    store, _, policy = run_round(cfg, tiny_policy, upto="score")
    job = round_plan(cfg.model_copy(update={"stop_after": "prepare"}), 1, policy, Baseline()).prepare
    said: list[str] = []
    if publishes:
        assert launch(job, store, emit=said.append) == job.ref and store.is_complete(job.ref)
        assert any("published its artifact, which verifies, then its process exited with code 134" in s for s in said)
    else:
        with pytest.raises(StageFailed, match=r"^prepare round 1 failed: the stage process exited with code 134"):
            launch(job, store, emit=said.append)
        assert not store.is_complete(job.ref)


def test_a_native_abort_is_reported_with_what_it_threw(tmp_path):
    """A rank that dies in C++ (gloo's enforce, thrown on a background thread) leaves only "Signal 6" in the
    launcher's summary: the failure names the exception and its message from the rank's output."""
    import subprocess
    import sys
    from collections import deque

    from rebelflow.running.launch import _failure, _pump

    script = ("import os, sys\n"
              "print('terminate called after throwing an instance of \\'gloo::EnforceNotMet\\'', flush=True)\n"
              "print('  what():  [enforce fail at pair.cc:446] op.preamble.length <= op.nbytes. 8 vs 4', flush=True)\n"
              "for i in range(50): print('elastic noise', i, flush=True)\n"
              "os.abort()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(tmp_path / "stage.log", "w") as log:
        reports = _pump(proc, log, deque(maxlen=40), lambda line: None)
    error = str(_failure(proc.returncode, deque(), tmp_path / "stage.log", reports))
    assert error.startswith("the stage process was killed by SIGABRT"), error
    assert ("root cause: gloo::EnforceNotMet: [enforce fail at pair.cc:446] op.preamble.length <= op.nbytes. 8 vs 4 "
            "(a native abort)") in error
