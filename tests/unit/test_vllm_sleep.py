"""An online round's vLLM engine sleeps between generations (GPU only: the real engine is exercised in the
vllm tier on a GPU): what it asks of vLLM and when, with vLLM's LLM replaced by a recorder, and that the
online loop lets it rest after every sampling."""

from __future__ import annotations

from rebelflow.engines.vllm import VLLMEngine


class Recorder:
    def __init__(self):
        self.calls = []

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags)))

    def collective_rpc(self, method, kwargs):
        self.calls.append((method, len(list(kwargs["weights_iterator"]))))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def engine(sleeps: bool) -> VLLMEngine:
    e = VLLMEngine.__new__(VLLMEngine)
    e.llm, e.sleeps, e.asleep = Recorder(), sleeps, set()
    return e


def test_a_resting_engine_wakes_its_weights_for_a_push_and_its_cache_for_generation():
    e = engine(sleeps=True)
    e.rest()
    e.rest()  # already asleep: nothing more
    e.push([("w", 1), ("b", 2)])
    e._wake("weights", "kv_cache")  # what generate does first
    e.push([("w", 3)])
    assert e.llm.calls == [
        ("sleep", 1),
        ("wake_up", ("weights",)), ("reload_weights", 2),  # the prefix cache went with the sleep
        ("wake_up", ("kv_cache",)),
        ("reload_weights", 1), ("reset_prefix_cache",),  # awake: the old weights' cached prefixes go
    ]
    assert e.asleep == set()


def test_an_engine_without_sleep_mode_keeps_its_memory():
    e = engine(sleeps=False)  # the CPU build, or vllm.sleep: false
    e.rest()
    e.push([("w", 1)])
    assert e.llm.calls == [("reload_weights", 1), ("reset_prefix_cache",)]
