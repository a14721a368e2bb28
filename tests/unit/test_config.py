from pathlib import Path

import pytest
from typer.testing import CliRunner

from rebelflow.cli import app
from rebelflow.config.campaign import LauncherConfig
from rebelflow.config.errors import ConfigError
from rebelflow.config.loading import load_config
from rebelflow.planning.campaign import campaign_jobs
from tests.conftest import REPO, make_config

ALL_PRESETS = sorted([*(REPO / "configs").glob("*.yaml"), *(REPO / "configs" / "examples").glob("*.yaml")])
# Reward-model presets (rm-train / rm-eval) have a `name:`; campaign presets a `campaign:`.
RM_PRESETS = [p for p in ALL_PRESETS if "\nname:" in "\n" + p.read_text()]
PRESETS = [p for p in ALL_PRESETS if p not in RM_PRESETS]


def test_there_are_presets():
    assert [p.name for p in PRESETS if p.name.startswith("demo-")]
    assert "demo-rm.yaml" in [p.name for p in RM_PRESETS] and len(RM_PRESETS) >= 3


@pytest.mark.parametrize("preset", RM_PRESETS, ids=lambda p: p.name)
def test_every_reward_model_preset_loads_and_plans(preset, tmp_path):
    from rebelflow.config.reward_model import RMConfig
    from rebelflow.planning.reward_model import rm_jobs
    from rebelflow.store.local import Store

    cfg = load_config(preset, root=RMConfig, store=str(tmp_path))
    if cfg.data is not None:
        jobs = rm_jobs(cfg, train=True)
        names = [j.name for j in jobs]
        assert names[-4:-2] == ["rm_train", "heldout_eval"] and names[-1:] == (["rm_eval"] if cfg.eval.data else [])
        held = jobs[names.index("heldout_eval")]
        assert [r.stage for r in held.inputs] == ["preferences", "rm_train"] and held.settings["split"] == "heldout"
    else:
        names = [j.name for j in rm_jobs(cfg, train=False, store=Store(tmp_path))]
        assert names == ["eval_preferences", "rm_eval"]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads_and_plans(preset):
    cfg = load_config(preset)
    jobs = campaign_jobs(cfg)
    expected = [s for s in cfg.stages() if s != "evaluate"]
    if "evaluate" in cfg.stages():
        expected += ["eval_generate", "eval_score", "evaluate"] + (["judge"] if cfg.evaluate.judge else [])
    assert [j.name for j in jobs if j.round == 1] == expected
    assert Path(cfg.prompts.source).is_absolute() or not cfg.prompts.is_local()


def test_unknown_key_names_the_path_and_suggests(tmp_path, prompts_file):
    with pytest.raises(ConfigError, match=r"\[generate.tempreature\] unknown key. Did you mean 'temperature'"):
        make_config(tmp_path, prompts_file, generate={"tempreature": 0.7})


def test_set_override_is_type_checked():
    with pytest.raises(ConfigError, match=r"\[generate.n\] \(got 'many'\)"):
        load_config(REPO / "configs/demo-rebel.yaml", ["generate.n=many"])
    cfg = load_config(REPO / "configs/demo-rebel.yaml", ["generate.n=3", "prepare.require_eot=true"])
    assert cfg.generate.n == 3 and cfg.prepare.require_eot is True


def test_set_override_unknown_path_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'nn' under generate. Did you mean 'n'\?.*Valid keys: engine"):
        load_config(REPO / "configs/demo-rebel.yaml", ["generate.nn=3"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(REPO / "configs/demo-rebel.yaml", ["generate.n"])


def test_more_rounds_need_training(tmp_path, prompts_file):
    with pytest.raises(ConfigError, match="rounds: 2 needs each round's trained policy, but stop_after is 'prepare'"):
        make_config(tmp_path, prompts_file, rounds=2, stop_after="prepare")


def test_evaluation_needs_held_out_prompts(tmp_path, prompts_file):
    with pytest.raises(ConfigError, match="evaluation needs held-out prompts: set evaluate.prompts"):
        make_config(tmp_path, prompts_file, evaluate={"prompts": None})


def test_cross_field_validation_pairs_below_per_round(tmp_path, prompts_file):
    with pytest.raises(ConfigError, match=r"validation_pairs \(8\) must be below prompts.per_round \(8\).*Lower"):
        make_config(tmp_path, prompts_file, prompts={"per_round": 8}, prepare={"validation_pairs": 8})


def test_one_prompt_column_and_disjoint_needs_per_round(tmp_path, prompts_file):
    with pytest.raises(ConfigError, match="set exactly one of prompt_column"):
        make_config(tmp_path, prompts_file, prompts={"messages_column": "messages"})
    with pytest.raises(ConfigError, match="selection 'disjoint'.*per_round is not set"):
        make_config(tmp_path, prompts_file, prompts={"selection": "disjoint"})


def test_n_at_least_two_and_positive_temperature(tmp_path, prompts_file):
    with pytest.raises(ConfigError, match=r"generate.n is 1 .* needs n >= 2 and temperature > 0"):
        make_config(tmp_path, prompts_file, generate={"n": 1})
    with pytest.raises(ConfigError, match=r"generate.temperature 0.0: .*greedy samples are identical"):
        make_config(tmp_path, prompts_file, generate={"temperature": 0})


def test_rule_reward_needs_an_importable_function(tmp_path, prompts_file):
    with pytest.raises(ConfigError, match="backend 'rule' needs function"):
        make_config(tmp_path, prompts_file, reward={"backend": "rule", "function": None})
    cfg = make_config(tmp_path, prompts_file, reward={"function": "no_such_module_xyz:fn"})
    with pytest.raises(ConfigError, match="module 'no_such_module_xyz' cannot be imported"):
        campaign_jobs(cfg)


def test_missing_prompts_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\[prompts.source\] .*nope.jsonl': file not found"):
        make_config(tmp_path, tmp_path / "nope.jsonl")


def test_relative_paths_resolve_against_the_config_file(tmp_path, prompts_file):
    (tmp_path / "rules.py").write_text("def r(messages, response):\n    return 1.0\n")
    (tmp_path / "c.yaml").write_text(
        "campaign: c\nprompts: {source: prompts.jsonl}\nreward: {backend: rule, function: rules.py:r}\n"
        "prepare: {validation_pairs: 1}\nevaluate: {prompts: {source: prompts.jsonl}}\n"
    )
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.prompts.source == str(prompts_file)
    assert cfg.reward.function == f"{tmp_path / 'rules.py'}:r"
    assert cfg.evaluate.prompts.source == str(prompts_file)


def test_cli_config_error_exits_2_before_any_stage(tmp_path):
    result = CliRunner().invoke(app, ["run", str(REPO / "configs/demo-rebel.yaml"), "--set", "train.micro_batch_pairs=7",
                                      "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "micro_batch_pairs (7) must divide pairs_per_update (32)" in result.output
    assert "Set micro_batch_pairs to a divisor of 32" in result.output
    assert not (tmp_path / "s").exists()


def test_engine_and_launcher_settings_are_checked(tmp_path, prompts_file):
    from rebelflow.config.errors import ConfigError
    from rebelflow.planning.preflight import check_engines
    from tests.conftest import make_config

    with pytest.raises(ConfigError, match="set kind: subprocess"):
        make_config(tmp_path, prompts_file, generate={"launcher": {"env": "vllm"}})
    with pytest.raises(ConfigError, match="needs the endpoint"):
        make_config(tmp_path, prompts_file, dialogue={"user": {"kind": "llm", "engine": "openai"}})
    both = {"kind": "llm", "model": "m", "engine": "vllm", "vllm": {"gpu_memory_utilization": 0.5}}
    with pytest.raises(ConfigError, match="add up to 1.40"):
        make_config(tmp_path, prompts_file, dialogue={"user": both}, generate={"engine": "vllm"})
    llm_user = {"user": {"kind": "llm", "model": "m"}}
    assert make_config(tmp_path, prompts_file, dialogue=llm_user).dialogue.user.engine == "hf"  # the policy's
    with pytest.raises(ConfigError, match="add up to 1.35"):  # a vLLM policy's user is on vLLM too
        make_config(tmp_path, prompts_file, dialogue=llm_user, generate={"engine": "vllm"})
    with pytest.raises(ConfigError, match="multiple of 8"):
        make_config(tmp_path, prompts_file, train={"pairs_per_update": 4, "micro_batch_pairs": 2,
                                                   "launcher": {"kind": "accelerate", "num_processes": 4}})
    monkeypatch_env = {"generate": {"engine": "vllm", "launcher": {"kind": "subprocess", "env": "nowhere"}}}
    cfg = make_config(tmp_path, prompts_file, **monkeypatch_env)
    with pytest.raises(ConfigError, match="environment 'nowhere' was not found.*make nowhere-env"):
        check_engines(cfg)
    cfg = make_config(tmp_path, prompts_file, generate={"engine": "vllm"})
    with pytest.raises(ConfigError, match="vLLM is not installed.*make vllm-env"):
        check_engines(cfg)


def test_launch_configs_resolve_against_the_campaign_file_and_must_exist(tmp_path):
    text = (REPO / "configs/rebel-llama3-armorm.yaml").read_text()
    cfg = load_config(REPO / "configs/rebel-llama3-armorm.yaml")
    assert cfg.train.launcher.config_file == str(REPO / "configs/accelerate/zero3.yaml")
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match="accelerate/zero3.yaml' not found"):
        load_config(tmp_path / "c.yaml")


def test_doctor_names_what_a_config_needs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rebelflow.cli import app

    ok = CliRunner().invoke(app, ["doctor", str(REPO / "configs/demo-rebel.yaml")])
    assert ok.exit_code == 0 and "ready" in ok.output and "deepspeed" in ok.output
    rm = CliRunner().invoke(app, ["doctor", str(REPO / "configs/demo-rm.yaml")])
    assert rm.exit_code == 0 and "rm_train" in rm.output and "rm_eval" in rm.output
    import torch

    # Every problem is reported, not only the first: here both a missing vLLM environment and too few GPUs.
    monkeypatch.setenv("REBELFLOW_ENV_VLLM", str(tmp_path / "no-such-venv/bin/python"))
    gpu = CliRunner().invoke(app, ["doctor", str(REPO / "configs/rebel-llama3-armorm.yaml")])
    flat = " ".join(gpu.output.split())
    assert gpu.exit_code == 1 and "REBELFLOW_ENV_VLLM" in flat
    if torch.cuda.device_count() < 8:
        assert "tensor_parallel_size 8 needs that many GPUs" in flat


def test_model_stages_take_the_gpu_limit_and_rule_scoring_does_not(tmp_path, prompts_file):
    from rebelflow.planning.campaign import campaign_jobs
    from rebelflow.tasks import accelerator_limit, uses_accelerator

    jobs = {j.name: j for j in campaign_jobs(make_config(tmp_path, prompts_file)) if j.round == 1}
    assert uses_accelerator(jobs["generate"]) and uses_accelerator(jobs["train"]) and uses_accelerator(jobs["logprobs"])
    assert not uses_accelerator(jobs["score"]) and not uses_accelerator(jobs["prepare"])  # a rule reward
    classifier = make_config(tmp_path, prompts_file, reward={"backend": "classifier", "function": None, "model": "x/y"})
    assert uses_accelerator(next(j for j in campaign_jobs(classifier) if j.name == "score"))
    assert accelerator_limit() == "gpu"


def test_settings_that_cannot_change_the_weights_stay_out_of_training_fingerprints(tmp_path, prompts_file):
    """Checkpoints and validation every N updates give byte-identical weights: changing them must not retrain."""
    from rebelflow.planning.campaign import campaign_jobs

    def ids(train=None, sft=None):
        sft = {"data": str(prompts_file), "prompt_column": "prompt", "response_column": "prompt", **(sft or {})}
        cfg = make_config(tmp_path, prompts_file, train=train or {}, sft=sft)
        return {(j.name, j.round): j.ref.id for j in campaign_jobs(cfg) if j.name in ("train", "sft")}

    base = ids()
    assert len(base) == 2
    assert ids({"checkpoint_every": 7, "eval_every": 3}, {"checkpoint_every": 5}) == base
    assert ids({"lr": 0.5}) != base  # a setting that does change them


def test_train_and_logprobs_must_compute_in_one_precision(tmp_path, prompts_file):
    with pytest.raises(ConfigError, match=r"train.dtype \(bfloat16\) and logprobs.dtype \(float32\) differ.*Set both"):
        make_config(tmp_path, prompts_file, train={"dtype": "bfloat16"})
    assert make_config(tmp_path, prompts_file, train={"dtype": "bfloat16"}, logprobs={"dtype": "bfloat16"})


def test_preflight_finds_wrong_models_and_infeasible_slices_before_any_work(tmp_path, prompts_file, tiny_policy):
    from rebelflow.config.errors import DataError
    from rebelflow.planning.preflight import check_models, preflight

    (tmp_path / "notamodel").mkdir()
    for source, problem in [(str(tmp_path / "missing"), "neither a model folder on this machine .no such folder"),
                            (str(tmp_path / "notamodel"), "a folder without config.json"),
                            ("a/b/c", "neither a model folder"), ("bad id!", "nor a Hub model id")]:
        with pytest.raises(ConfigError, match=rf"\[policy.model\] .*{problem}"):
            preflight(make_config(tmp_path, prompts_file, policy={"model": source}))
    check_models({"policy.model": "meta-llama/Meta-Llama-3-8B-Instruct", "reward.model": tiny_policy})
    # 12 prompts: 2 held out leave 10 pairs at most, fewer than 16 per update
    with pytest.raises(DataError, match=r"round 1 has 12 prompts.*leaving 10, fewer than train.pairs_per_update \(16\)"):
        preflight(make_config(tmp_path, prompts_file, train={"pairs_per_update": 16, "micro_batch_pairs": 2}))
    # a real tokenizer at hand: every prompt longer than prepare.max_prompt_tokens
    with pytest.raises(DataError, match=r"longer than prepare.max_prompt_tokens \(4;"):
        preflight(make_config(tmp_path, prompts_file, policy={"model": tiny_policy}, prepare={"max_prompt_tokens": 4}))
    preflight(make_config(tmp_path, prompts_file, policy={"model": tiny_policy}))


def test_small_config_conveniences(tmp_path, prompts_file, monkeypatch):
    """wandb switched off by --set on a config without a tracking section; a scripted user's file.py is read
    from the config's folder, like a rule reward's; plan's ids are printed whole at 80 columns."""
    folder = tmp_path / "cfgs"
    folder.mkdir()
    (folder / "u.py").write_text("def ask(messages):\n    return 'more?'\n")
    (folder / "c.yaml").write_text(
        f"campaign: c\nprompts: {{source: {prompts_file}, id_column: id}}\n"
        "reward: {backend: rule, function: 'rebelflow.rewards.examples:cheerful_words'}\n"
        "dialogue: {turns: 2, user: {kind: scripted, function: u.py:ask}}\nstop_after: prepare\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(folder / "c.yaml", ["tracking.wandb.mode=disabled"])
    assert cfg.tracking.wandb.mode == "disabled"
    with pytest.raises(ConfigError, match="set tracking.wandb.project"):
        load_config(folder / "c.yaml", ["tracking.wandb.mode=offline"])
    assert cfg.dialogue.user.function == f"{folder / 'u.py'}:ask"
    result = CliRunner().invoke(app, ["plan", str(folder / "c.yaml"), "--store", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    for job in campaign_jobs(cfg):
        assert job.ref.id in result.output


@pytest.mark.parametrize("preset", ["demo-rebel.yaml", "demo-refuel.yaml"])
def test_every_stage_computes_the_id_the_plan_gives_it(preset):
    """A stage recomputes its artifact id from the settings the launcher hands it: it must be the plan's
    (a Settings class that hashed other fields than the planner's would fail every run at that stage)."""
    from rebelflow.stages import stage_module
    from rebelflow.store.refs import artifact_ref

    for job in campaign_jobs(load_config(REPO / "configs" / preset)):
        module = stage_module(job.stage)
        settings = module.Settings.model_validate(job.settings)
        assert artifact_ref(module.NAME, module.VERSION, module.KIND, settings, job.inputs) == job.ref, job.name


def test_a_launch_counts_the_processes_its_accelerate_config_starts(tmp_path, prompts_file):
    """The shipped ZeRO configs start 8 processes: an online round's prompts must share out over them, and an
    iterative round's update too, also when only config_file says how many."""
    zero3 = str(REPO / "configs/accelerate/zero3.yaml")
    launcher = {"kind": "accelerate", "config_file": zero3}
    assert LauncherConfig(**launcher).processes() == 8 and LauncherConfig(**launcher, num_processes=2).processes() == 2
    assert LauncherConfig().processes() == 1
    with pytest.raises(ConfigError, match=r"prompts_per_iteration \(4\) cannot be shared equally over the train "
                                          r"launcher's 8 processes"):
        make_config(tmp_path, prompts_file, online={"iterations": 1, "prompts_per_iteration": 4, "minibatch_pairs": 2},
                    stop_after="train", train={"launcher": launcher})
    with pytest.raises(ConfigError, match=r"train.pairs_per_update \(4\) must split into equal micro-batches of "
                                          r"micro_batch_pairs \(2\) over the launcher's 8 processes"):
        make_config(tmp_path, prompts_file, train={"launcher": launcher})


def test_overrides_that_change_results_make_a_named_variant(tmp_path):
    """A variant is what changes a fingerprint of the campaign as written: more rounds, another store, a
    launcher or tracking keep the campaign (iterative rounds); each key counts once (its last value), in key
    order; --set campaign= names the variant itself; a path in a value gives a hashed name, so two paths
    never share one; an online campaign's rounds change its schedule, so they make a variant."""
    from rebelflow.config.campaign import VariantConfig
    from rebelflow.planning.campaign import name_variant

    def run(path, overrides):
        return name_variant(load_config(path, overrides), load_config(path), overrides)

    demo = str(REPO / "configs/demo-rebel.yaml")
    same = run(demo, ["rounds=4", "train.launcher.kind=subprocess", "train.checkpoint_every=5",
                      "tracking.wandb.mode=disabled", f"store.root={tmp_path}"])
    assert same.campaign == "demo-rebel" and same.variant is None
    a = run(demo, ["train.eta=2", "generate.n=3", "train.eta=3", "rounds=2"])
    b = run(demo, ["generate.n=3", "train.eta=3"])
    assert a.campaign == b.campaign == "demo-rebel--generate.n-3_train.eta-3"
    assert a.variant == b.variant == VariantConfig(of="demo-rebel", overrides=["generate.n=3", "train.eta=3"])
    assert run(demo, ["train.eta=2.0"]).variant is None  # the file's own value: the campaign itself
    named = run(demo, ["campaign=eta3", "train.eta=3"])
    assert named.campaign == "eta3" and named.variant.of == "demo-rebel"
    paths = [VariantConfig(of="demo-rebel", overrides=[f"prompts.source={p}"]).name() for p in ("d/v2.jsonl", "d-v2.jsonl")]
    assert paths[0] != paths[1] and all(len(n) <= 64 and n.startswith("demo-rebel--") for n in paths)
    online = run(str(REPO / "configs/demo-online.yaml"), ["rounds=4"])
    assert online.campaign == "demo-online--rounds-4" and online.variant.overrides == ["rounds=4"]
