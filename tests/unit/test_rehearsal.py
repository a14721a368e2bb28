"""A preset's rehearsal keeps what the GPUs would run — stages, engines, launchers and their accelerate
configs, reward backend, user kind — and swaps only models (tiny ones of the same family, with the
Llama-3 tokenizer and template), Hub data (generated rows with the preset's columns) and sizes; every
value that differs is named in a printed substitution. The full rehearsals run in the deepspeed and vllm
tiers (tests/engines/test_rehearsal.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rebelflow.config.campaign import RunConfig
from rebelflow.config.errors import ConfigError
from rebelflow.config.loading import load_config
from rebelflow.config.reward_model import RMConfig
from rebelflow.planning.campaign import plan_status
from rebelflow.rehearsal import rehearsal_of
from tests.conftest import REPO

CAMPAIGN_PRESETS = ["rebel-llama3-armorm.yaml", "refuel-llama3-armorm.yaml", "rebel-chat-llama3-online.yaml",
                    "refuel-hh-online.yaml", "refuel-ultrainteract-online.yaml", "rebel-tldr-pythia-online.yaml",
                    "rebel-chat-openchat-online.yaml", "ppo-tldr-pythia-online.yaml"]
RM_PRESETS = ["rm-llama3-bt.yaml", "rm-eval-fsfairx.yaml"]


def test_every_gpu_preset_is_covered():
    shipped = {p.name for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("demo-")}
    assert shipped == set(CAMPAIGN_PRESETS + RM_PRESETS)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("rehearsal") / "store")  # shared: the tiny models are built once


def leaves(data, prefix=""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), data


def changed_keys(before: dict, after: dict) -> set[str]:
    a, b = dict(leaves(before)), dict(leaves(after))
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def assert_every_change_noted(preset, rehearsal, notes: list[str]) -> None:
    noted = [line.split(":")[0] for line in notes]
    for key in changed_keys(preset.model_dump(mode="json"), rehearsal.model_dump(mode="json")):
        parts = key.split(".")
        covering = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        # a replaced source also sets its split; a replaced section (hub) covers its keys
        covering |= {key.rsplit(".", 1)[0] + ".source"} if key.endswith(".split") else set()
        assert covering & set(noted), f"{key} changed without a substitution line; lines: {noted}"


def launchers(cfg: RunConfig) -> dict:
    names = ("generate", "score", "prepare", "logprobs", "train", "evaluate")
    return {n: (getattr(cfg, n).launcher.kind, getattr(cfg, n).launcher.env, getattr(cfg, n).launcher.config_file)
            for n in names}


def assert_family_folder(path: str, source: str) -> None:
    """A stand-in of the named model's family: Llama-3's tokenizer and template for Llama-3 models, else the
    family's architecture (GPT-NeoX for Pythia, Mistral for OpenChat)."""
    from rebelflow.rehearsal.models import family_of

    family = family_of(source)
    if family.tokenizer == "llama3":
        assert_llama3_folder(path)
    else:
        assert json.loads((Path(path) / "config.json").read_text())["model_type"] == family.model_type


def assert_llama3_folder(path: str) -> None:
    from transformers import AutoTokenizer

    folder = Path(path)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" \
                   "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert tok.eos_token == "<|eot_id|>" and tok.pad_token is None  # as Llama-3-8B-Instruct ships


@pytest.mark.parametrize("name", CAMPAIGN_PRESETS)
def test_a_campaign_rehearsal_keeps_the_presets_machinery_and_names_every_substitution(name, store):
    preset = load_config(REPO / "configs" / name)
    cfg, notes = rehearsal_of(REPO / "configs" / name, store=store)
    # what the GPUs would run stays
    assert cfg.stages() == preset.stages() and launchers(cfg) == launchers(preset)
    assert (cfg.generate.engine, cfg.reward.backend) == (preset.generate.engine, preset.reward.backend)
    # bf16 stays where this CPU computes it natively; else fp32, and the swap is printed
    from rebelflow.ml.models import cpu_has_bf16

    kept = preset.train.dtype if preset.train.dtype == "float32" or cpu_has_bf16() else "float32"
    assert cfg.train.dtype == kept == cfg.logprobs.dtype
    assert (kept == preset.train.dtype) != any(n.startswith("train.dtype:") for n in notes), notes
    assert (cfg.dialogue is None) == (preset.dialogue is None)
    if cfg.dialogue is not None:
        assert (cfg.dialogue.user.kind, cfg.dialogue.user.engine, cfg.dialogue.turns) == (
            preset.dialogue.user.kind, preset.dialogue.user.engine, preset.dialogue.turns)
        if preset.dialogue.user.kind == "llm":
            assert_llama3_folder(cfg.dialogue.user.model)
    # models, data and sizes are swapped, and each swap is printed
    assert_family_folder(cfg.policy.model, preset.policy.model)
    if preset.reward.backend == "armorm":
        assert (Path(cfg.reward.model) / "modeling_armo_standin.py").is_file()  # remote code, as ArmoRM ships
    elif preset.reward.backend == "value_head":  # one checkpoint: the backbone under its prefix, the head
        from safetensors import safe_open

        with safe_open(str(Path(cfg.reward.model) / "model.safetensors"), "pt") as f:
            names = set(f.keys())
        layout = preset.reward.value_head
        assert f"{layout.head}.weight" in names and all(n.startswith((layout.backbone_prefix, layout.head)) for n in names)
    else:
        assert_family_folder(cfg.reward.model, preset.reward.model)
    rows = [json.loads(line) for line in Path(cfg.prompts.source).read_text().splitlines()]
    columns = [preset.prompts.prompt_column or preset.prompts.messages_column, preset.prompts.id_column]
    assert all(c in row for row in rows for c in columns if c is not None)
    assert cfg.prompts.per_round <= 16 and cfg.train.launcher.num_processes <= 2 and cfg.rounds <= 2
    assert cfg.campaign == f"{preset.campaign}-rehearsal" and cfg.store.root == str(Path(store).resolve())
    assert_every_change_noted(preset, cfg, notes)


def test_held_out_evaluation_rows_stay_held_out(store):
    """REFUEL evaluates on rows of the training split far past the rounds' slices; the rehearsal keeps that."""
    cfg, _ = rehearsal_of(REPO / "configs" / "refuel-llama3-armorm.yaml", store=store)
    assert cfg.evaluate.prompts.source == cfg.prompts.source
    assert cfg.evaluate.prompts.offset == cfg.rounds * cfg.prompts.per_round  # past every round's slice
    rows = Path(cfg.prompts.source).read_text().splitlines()
    assert len(rows) == cfg.evaluate.prompts.offset + cfg.evaluate.prompts.per_round


def test_a_rehearsal_is_made_once_and_resumes_like_a_run(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the preset's own store (relative) would appear here
    first, _ = rehearsal_of(REPO / "configs" / "rebel-llama3-armorm.yaml", store=store)
    again, _ = rehearsal_of(REPO / "configs" / "rebel-llama3-armorm.yaml", store=store)
    assert [r["fingerprint"] for r in plan_status(first)] == [r["fingerprint"] for r in plan_status(again)]
    assert not (tmp_path / "rebelflow-store").exists()


def test_the_default_rehearsal_store_is_the_presets_with_a_suffix(tmp_path):
    cfg, _ = rehearsal_of(REPO / "configs" / "rebel-llama3-armorm.yaml", [f"store.root={tmp_path / 'real-store'}"])
    assert cfg.store.root == str(tmp_path / "real-store-rehearsal")
    assert not (tmp_path / "real-store").exists()


def test_a_mistake_in_the_preset_is_reported_as_the_presets(store):
    with pytest.raises(ConfigError, match=r"(?s)rebel-llama3-armorm.yaml: 1 problem.*micro_batch_pairs \(3\)"):
        rehearsal_of(REPO / "configs" / "rebel-llama3-armorm.yaml", ["train.micro_batch_pairs=3"], store=store)


@pytest.mark.parametrize("name", RM_PRESETS)
def test_a_reward_model_rehearsal_keeps_its_launchers_and_names_every_substitution(name, store):
    preset = load_config(REPO / "configs" / name, root=RMConfig)
    cfg, notes = rehearsal_of(REPO / "configs" / name, store=store, root=RMConfig)
    assert (cfg.train.launcher.kind, cfg.train.launcher.config_file) == (
        preset.train.launcher.kind, preset.train.launcher.config_file)
    assert cfg.eval.launcher.kind == preset.eval.launcher.kind and cfg.eval.weights == preset.eval.weights
    if preset.data is not None:
        assert_llama3_folder(cfg.model)
    if preset.eval.reward is not None:
        assert cfg.eval.reward.backend == preset.eval.reward.backend
        assert cfg.eval.reward.pad_token == preset.eval.reward.pad_token  # it must exist in the real vocabulary
    rows = [json.loads(line) for line in Path(cfg.eval.data.source).read_text().splitlines()]
    from rebelflow.ml.rewardbench import load_weighting

    subsets = {s for section in load_weighting(cfg.eval.weights).sections.values() for s in section}
    assert {row["subset"] for row in rows} == subsets  # every section of the weighting gets scores
    assert_every_change_noted(preset, cfg, notes)


def test_without_the_tokenizer_package_a_tiny_tokenizer_keeps_llama3s_tokens_and_template(monkeypatch):
    from rebelflow.rehearsal import models

    monkeypatch.setattr(models, "has_real_llama3_tokenizer", lambda: False)
    tok = models.llama3_tokenizer()
    assert len(tok) < 2000 and "<|reserved_special_token_0|>" in tok.get_vocab()
    text = tok.apply_chat_template([{"role": "user", "content": " Hi "}], tokenize=False, add_generation_prompt=True)
    assert text == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" \
                   "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ids = tok("Hi")["input_ids"]  # like Llama-3-8B-Instruct, plain encoding adds BOS (rebelflow never asks it to)
    assert ids[0] == tok.bos_token_id and tok("Hi", add_special_tokens=False)["input_ids"] == ids[1:]
    assert "without" not in models.tokenizer_note(models.family_of("meta-llama/Meta-Llama-3-8B-Instruct"))


@pytest.mark.parametrize(("source", "model_type", "tokenizer"), [
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama", "llama3"),
    ("sfairXC/FsfairX-LLaMA3-RM-v0.1", "llama", "llama3"),
    ("Qwen/Qwen2.5-7B-Instruct", "qwen2", "chatml"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral", "chatml"),
    ("someone/unknown-model", "llama", "chatml"),
])
def test_the_family_comes_from_the_name_of_a_hub_model(source, model_type, tokenizer):
    from rebelflow.rehearsal.models import family_of

    family = family_of(source)
    assert (family.model_type, family.tokenizer) == (model_type, tokenizer)


def test_a_local_model_keeps_its_architecture_and_tokenizer(tmp_path, tiny_policy):
    from transformers import AutoTokenizer

    from rebelflow.rehearsal.models import stand_in

    made = stand_in("causal_lm", tiny_policy, tmp_path, "policy", 0, "float32")
    assert stand_in("causal_lm", tiny_policy, tmp_path, "policy", 0, "float32") == made  # built once
    assert json.loads((made / "config.json").read_text())["model_type"] == "llama"
    assert AutoTokenizer.from_pretrained(made).get_vocab() == AutoTokenizer.from_pretrained(tiny_policy).get_vocab()


def test_a_users_own_cpu_config_rehearses_too(tmp_path):
    """The demo (a tiny policy, a rule reward, local prompts): nothing to swap but sizes and the store."""
    preset = load_config(REPO / "configs" / "demo-rebel.yaml")
    cfg, notes = rehearsal_of(REPO / "configs" / "demo-rebel.yaml", store=str(tmp_path / "store"))
    assert cfg.policy.model == "tiny" and cfg.reward.backend == "rule"
    assert cfg.prompts.source == preset.prompts.source
    assert not any(line.startswith(("policy.model", "reward.model", "prompts.source")) for line in notes)


REFUEL = REPO / "configs" / "refuel-llama3-armorm.yaml"


def test_a_served_user_is_rehearsed_on_a_local_engine_that_fits(store):
    served = ["dialogue.user.engine=openai", "dialogue.user.openai.base_url=http://10.0.0.5:8000/v1",
              "dialogue.user.openai.model=llama-70b"]
    cfg, notes = rehearsal_of(REFUEL, served, store=store)
    user = cfg.dialogue.user
    assert (user.engine, user.openai, user.vllm.tensor_parallel_size, user.vllm.max_model_len) == ("vllm", None, 1, 2048)
    assert user.vllm.gpu_memory_utilization + cfg.generate.vllm.gpu_memory_utilization <= 0.95
    assert any(line.startswith("dialogue.user.engine: openai -> vllm") for line in notes)
    assert_llama3_folder(user.model)


def test_process_counts_from_the_launch_config_file_are_scaled_too(store):
    cfg, notes = rehearsal_of(REPO / "configs" / "rebel-llama3-armorm.yaml", ["train.launcher.num_processes=null"],
                              store=store)  # zero3.yaml itself says 8 processes
    assert cfg.train.launcher.num_processes == 2 and "train.launcher.num_processes: 8 -> 2" in " ".join(notes)


def test_a_local_prompt_files_slices_stay_as_the_user_set_them(tmp_path, store):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": f"Question {i}?"}) + "\n" for i in range(60)))
    mine = [f"prompts.source={prompts}", "prompts.offset=20", f"evaluate.prompts.source={prompts}",
            "evaluate.prompts.split=train", "evaluate.prompts.offset=0", "evaluate.prompts.per_round=10"]
    cfg, _ = rehearsal_of(REPO / "configs" / "rebel-llama3-armorm.yaml", mine, store=store)
    assert (cfg.prompts.source, cfg.prompts.offset, cfg.evaluate.prompts.offset) == (str(prompts), 20, 0)
    assert cfg.evaluate.prompts.per_round <= 8  # the held-out first rows stay apart from the training slice


def test_a_dataset_users_later_turns_are_in_every_generated_file(store):
    dataset_user = ["dialogue.user.kind=dataset", "dialogue.user.turns_column=later_turns",
                    "evaluate.prompts.source=someone/held-out-dialogues"]
    cfg, _ = rehearsal_of(REFUEL, dataset_user, store=store)
    for source in (cfg.prompts.source, cfg.evaluate.prompts.source):
        rows = [json.loads(line) for line in Path(source).read_text().splitlines()]
        assert all(len(row["later_turns"]) == cfg.dialogue.turns - 1 for row in rows)


def test_a_reward_model_from_rm_train_is_looked_up_in_the_rehearsal_store(store):
    with pytest.raises(ConfigError, match=r"\[reward.artifact\].*rm-train"):
        rehearsal_of(REPO / "configs" / "rebel-llama3-armorm.yaml",
                     ["reward.backend=classifier", "reward.artifact=rm_train-0123", "reward.model=null",
                      "reward.trust_remote_code=false"], store=store)


def test_an_online_campaign_rehearses_a_few_small_iterations(tmp_path):
    cfg, notes = rehearsal_of(REPO / "configs" / "demo-online.yaml", store=str(tmp_path / "store"))
    o = cfg.online
    assert (o.iterations, o.prompts_per_iteration, o.minibatch_pairs, o.checkpoint_every) == (4, 4, 2, 2)
    assert "online.iterations: 60 -> 4" in "\n".join(notes)
    assert [j for j in plan_status(cfg) if j["stage"] == "online"]


def test_a_served_judge_is_rehearsed_by_a_scripted_stand_in(store):
    """No endpoint is called (or billed) in a rehearsal: an openai judge becomes the scripted stand-in, noted."""
    judge = "evaluate.judge={kind: openai, openai: {base_url: 'http://127.0.0.1:9/v1', model: judge, api_key_env: null}}"
    cfg, notes = rehearsal_of(REPO / "configs" / "rebel-llama3-armorm.yaml", [judge], store=store)
    assert (cfg.evaluate.judge.kind, cfg.evaluate.judge.function) == ("callable", "rebelflow.judges.examples:stand_in")
    assert cfg.evaluate.judge.openai is None
    assert any("evaluate.judge.kind" in line and "scripted stand-in" in line for line in notes)
