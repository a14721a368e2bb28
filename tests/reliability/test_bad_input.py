"""Bad input, as a new user gives it: each case exits 2 before any work (no artifact made) with the problem
and the fix named, or — when only a stage can find it — exits 1 with one message naming the step and
round, no traceback on the console, and the artifacts made before it intact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rebelflow.cli import app
from rebelflow.store.local import Store
from tests.conftest import TINY

BASE = {
    "campaign": "bad",
    "policy": {"model": "tiny", "tiny": TINY.model_dump()},
    "prompts": {"source": "prompts.jsonl", "id_column": "id"},
    "reward": {"backend": "rule", "function": "rebelflow.rewards.examples:cheerful_words"},
    "generate": {"n": 2, "max_new_tokens": 6, "shard_size": 4},
    "prepare": {"validation_pairs": 2},
    "train": {"pairs_per_update": 4, "micro_batch_pairs": 2, "launcher": {"kind": "inprocess"}},
    "stop_after": "prepare",
}


def write(tmp: Path, text: str, name="prompts.jsonl") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


def prompts(tmp: Path, n=12) -> None:
    write(tmp, "".join(json.dumps({"id": f"p{i}", "prompt": f"Say something about {i}."}) + "\n" for i in range(n)))


def no_pad_classifier(d: Path) -> None:
    """A reward model whose tokenizer has no pad token (as Llama-3's and ArmoRM's ship)."""
    from transformers import AutoTokenizer

    from rebelflow.ml.tiny import build_classifier

    path = build_classifier(d / "rm", TINY)
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = None
    tok.save_pretrained(path)


# case → (changes to the config (None deletes a key) or a function of the folder, --set items, the message)
BEFORE_WORK = {
    "unknown top-level key": ({"campain": "x"}, [], r"campain"),
    "typo in a key": ({"generate": {**BASE["generate"], "temprature": 1}}, [], r"temprature.*temperature"),
    "wrong type": ({}, ["generate.n=abc"], r"generate.n"),
    "one sample per prompt": ({}, ["generate.n=1"], r"generate.n is 1.*n >= 2"),
    "greedy sampling": ({}, ["generate.temperature=0"], r"temperature > 0"),
    "micro-batch does not divide": ({}, ["train.micro_batch_pairs=3", "stop_after=train"], r"micro_batch_pairs .3. must divide"),
    "rounds without training": ({"rounds": 2}, [], r"rounds: 2 needs each round's trained policy"),
    "evaluation without prompts": ({"stop_after": "evaluate"}, [], r"evaluation needs held-out prompts"),
    "validation above per_round": ({"prompts": {**BASE["prompts"], "per_round": 2}}, [], r"validation_pairs .2. must be below"),
    "two precisions": ({}, ["train.dtype=bfloat16"], r"train.dtype .bfloat16. and logprobs.dtype .float32. differ"),
    "campaign name": ({"campaign": "a b"}, [], r"campaign"),
    "set without =": ({}, ["generate.n"], r"expected KEY=VALUE"),
    "set unknown key": ({}, ["generate.bogus=1"], r"unknown key 'bogus'"),
    "set into a value": ({}, ["generate.n.x=1"], r"is a value, not a section"),
    "wandb without project": ({}, ["tracking.wandb.mode=offline"], r"set tracking.wandb.project"),
    "missing prompts file": ({"prompts": {**BASE["prompts"], "source": "nope.jsonl"}}, [], r"nope.jsonl"),
    "empty prompts file": (lambda d: write(d, "\n"), [], r"is empty"),
    "broken JSONL line": (lambda d: write(d, '{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": }\n'), [],
                          r"line 2 is not valid JSON.*Fix or remove"),
    "JSONL line not an object": (lambda d: write(d, '{"id": "a", "prompt": "x"}\n[1]\n'), [], r"line 2 holds a JSON list"),
    "prompt column missing": (lambda d: write(d, '{"id": "a", "question": "x"}\n'), [],
                              r"no column 'prompt'.*Set prompts.prompt_column"),
    "policy folder missing": ({"policy": {"model": "./no-model-here"}}, [], r"\[policy.model\].*no such folder"),
    "policy folder not a model": (lambda d: (d / "empty-model").mkdir(), ["policy.model=" + "{dir}/empty-model"],
                                  r"\[policy.model\].*without config.json"),
    "policy id malformed": ({"policy": {"model": "not a model!"}}, [], r"nor a Hub model id"),
    "reward file missing": ({"reward": {"backend": "rule", "function": "nowhere.py:fn"}}, [], r"nowhere.py"),
    "reward function missing": (lambda d: write(d, "def other(m, r):\n    return 1.0\n", "rules.py"),
                                ["reward.function=rules.py:missing"], r"missing"),
    "classifier without model": ({"reward": {"backend": "classifier"}}, [], r"reward"),
    "reward model without a pad token": (no_pad_classifier, ["reward.backend=classifier", "reward.model={dir}/rm"],
                                         r"\[reward.model\].*has no pad token.*Set reward.pad_token"),
    "too few prompts for an update": ({"stop_after": "train"}, ["train.pairs_per_update=12", "train.micro_batch_pairs=2"],
                                      r"round 1 has 12 prompts.*fewer than train.pairs_per_update"),
    "disjoint rounds past the data": ({"rounds": 3, "stop_after": "train", "prompts": {**BASE["prompts"], "per_round": 6,
                                       "selection": "disjoint"}}, [], r"usable prompts"),
    "missing environment": ({}, ["generate.launcher.kind=subprocess", "generate.launcher.env=nosuchenv"],
                            r"environment 'nosuchenv' was not found"),
    "vllm without vLLM": ({}, ["generate.engine=vllm"], r"vLLM is not installed"),
    "missing accelerate config": ({}, ["train.launcher.kind=accelerate", "train.launcher.config_file=nope.yaml",
                                       "stop_after=train"], r"config_file .*not found"),
    "online multi-turn with more samples": ({"online": {"iterations": 2, "samples_per_prompt": 4}, "stop_after": "train",
                                             "dialogue": {"turns": 2, "user": {"kind": "scripted",
                                                                               "function": "rebelflow.users.examples:addition_quiz"}}},
                                            [], r"two dialogues per prompt .*set online.samples_per_prompt: 2"),
    "online vllm outside the vllm environment": ({"online": {"iterations": 2}, "stop_after": "train"},
                                                 ["generate.engine=vllm"],
                                                 r"set train.launcher: \{kind: subprocess, env: vllm\}"),
    "online vllm taking the trainer's memory": ({"online": {"iterations": 2}, "stop_after": "train"},
                                                ["generate.engine=vllm", "train.launcher.kind=subprocess",
                                                 "train.launcher.env=vllm"],
                                                r"gpu_memory_utilization 0.9 would leave them too little"),
    "online prompts not shared equally": ({"online": {"iterations": 2, "prompts_per_iteration": 3, "minibatch_pairs": 2},
                                           "stop_after": "train"},
                                          ["train.launcher.kind=accelerate", "train.launcher.num_processes=2"],
                                          r"prompts_per_iteration \(3\) cannot be shared equally over the "
                                          r"train launcher's 2 processes.*multiple of 2"),
    "online stopping before training": ({"online": {"iterations": 2}}, [],
                                        r"stop_after 'prepare' cannot stop before it: set stop_after: train"),
    "online minibatch above its pairs": ({"online": {"iterations": 2, "prompts_per_iteration": 2, "minibatch_pairs": 4},
                                          "stop_after": "train"}, [], r"minibatch_pairs \(4\) is more than an iteration's pairs \(2"),
    "scripted user file missing": ({"dialogue": {"turns": 2, "user": {"kind": "scripted", "function": "gone.py:ask"}}},
                                   [], r"gone.py"),
}


@pytest.mark.parametrize("case", sorted(BEFORE_WORK))
def test_bad_input_fails_before_any_work_with_the_fix(tmp_path, case):
    change, overrides, message = BEFORE_WORK[case]
    prompts(tmp_path)
    cfg = dict(BASE)
    if callable(change):
        change(tmp_path)
    else:
        cfg.update(change)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    overrides = [o.replace("{dir}", str(tmp_path)) for o in overrides]
    args = ["run", str(tmp_path / "c.yaml"), "--store", str(tmp_path / "s")] + [a for o in overrides for a in ("--set", o)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert __import__("re").search(message, " ".join(result.output.split())), result.output
    assert not (tmp_path / "s" / "artifacts").exists()  # nothing was made


IN_A_STAGE = {  # only a stage can find these: exit 1, one message naming the step and round
    "reward raises for all": ("def fn(m, r):\n    raise KeyError('no')\n", {}, r"score round 1: the reward failed for all"),
    "reward returns a string": ("def fn(m, r):\n    return 'high'\n", {}, r"score round 1: .*reward is str, not a number"),
    "reward fails for half": ("def fn(m, r):\n    if int(m[-1]['content'].split()[-1].rstrip('.')) % 2:\n"
                              "        raise ValueError('odd')\n    return 1.0\n", {},
                              r"score round 1: the reward failed for \d+ of \d+ .*above score.max_invalid_fraction"),
    "every pair filtered": ("def fn(m, r):\n    return float(len(r))\n", {"prepare": {"validation_pairs": 2, "max_response_tokens": 1}},
                            r"prepare round 1: 0 of 12 prompts gave a pair.*Raise prepare.max_response_tokens"),
    "sft file without its column": ("def fn(m, r):\n    return 1.0\n", {"sft": {"data": "demos.jsonl"}},
                                    r"sft round 0: demonstrations .* has no column 'prompt'"),
}


@pytest.mark.parametrize("case", sorted(IN_A_STAGE))
def test_a_stage_failure_is_one_message_and_keeps_earlier_work(tmp_path, case):
    rule, change, message = IN_A_STAGE[case]
    prompts(tmp_path)
    write(tmp_path, rule, "rules.py")
    write(tmp_path, '{"question": "a", "answer": "b"}\n', "demos.jsonl")
    cfg = {**BASE, "reward": {"backend": "rule", "function": "rules.py:fn"}, **change}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "rebelflow.cli", "run", str(tmp_path / "c.yaml"), "--store",
                           str(tmp_path / "s")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    found = __import__("re").findall(message, " ".join(output.split()))
    assert len(found) == 1, output  # one message
    store = Store(tmp_path / "s")
    made = [p.name for p in (tmp_path / "s" / "artifacts").iterdir()] if (tmp_path / "s" / "artifacts").exists() else []
    for name in made:  # what was made before the failure is intact
        data = json.loads((tmp_path / "s" / "artifacts" / name / "manifest.json").read_text())
        assert store.verify(store.find(data["id"])) is None
    assert made, "the stages before the failing one should have made their artifacts"
