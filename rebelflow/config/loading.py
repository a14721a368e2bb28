"""Loading a campaign YAML: `--set` overrides, paths resolved against the file's folder, validation with
messages that name the key, the value, the rule and the fix. The models themselves live in config.py."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rebelflow.config.campaign import LOCAL_DATA_SUFFIXES, RunConfig
from rebelflow.config.errors import ConfigError


def load_config(path: str | Path, overrides: list[str] = (), store: str | None = None, root: type[BaseModel] = RunConfig):
    """Read a YAML preset, apply `a.b=c` overrides and validate against `root` (a campaign's RunConfig, or
    config.reward_model.RMConfig for the reward-model commands). Raises ConfigError with every problem.
    A campaign run under overrides that change results is a variant: planning.campaign.load_run names it."""
    return validate_config(read_config(path, overrides, store, root), origin=str(path), root=root)


def read_config(path: str | Path, overrides: list[str] = (), store: str | None = None,
                root: type[BaseModel] = RunConfig) -> dict[str, Any]:
    """The YAML preset as a mapping, with the overrides applied and paths resolved; not validated yet."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found. Give the path of a YAML file (see configs/).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}.")
    for item in overrides:
        apply_override(raw, item, root)
    if store is not None:
        raw.setdefault("store", {})["root"] = store
    _resolve_paths(raw, path.parent.resolve())
    return raw


def is_reward_model_config(path: str | Path) -> bool:
    """A reward-model config (rm-train, rm-eval) has a top-level `name`; a campaign a `campaign`."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "name" in raw and "campaign" not in raw


def validate_config(raw: dict[str, Any], origin: str = "config", root: type[BaseModel] = RunConfig):
    try:
        cfg = root.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin, root)) from None
    _check_sources(cfg)
    _resolve_reward_artifacts(cfg)
    return cfg


def _resolve_reward_artifacts(cfg: BaseModel) -> None:
    """A reward named by `artifact` (a model from rm-train) reads the model folder of that artifact in the
    config's store; the artifact id stays in the settings, so the lineage shows which one was used."""
    from rebelflow.store.local import Store

    owner, key = (cfg, "reward") if isinstance(cfg, RunConfig) else (cfg.eval, "reward")
    reward = getattr(owner, key)
    if reward is None or not reward.artifact:
        return
    store = Store(cfg.store.root)
    try:
        ref = store.find(reward.artifact)
    except KeyError as exc:
        raise ConfigError(
            f"[{key}.artifact] {exc.args[0]} Train one with `rebelflow rm-train CONFIG` into the same store "
            "(--store), and give the rm_train id it prints."
        ) from None
    if ref.stage != "rm_train":
        raise ConfigError(
            f"[{key}.artifact] {ref.id} is a {ref.stage} artifact, not a reward model. Give the id of an rm_train "
            "artifact (rebelflow rm-train prints it)."
        )
    problem = store.verify(ref)
    if problem is not None:
        raise ConfigError(f"[{key}.artifact] {ref.id}: {problem}. Run rm-train again to remake it.")
    setattr(owner, key, reward.model_copy(update={"model": store.model_path(ref)}))


def apply_override(raw: dict[str, Any], item: str, root: type[BaseModel] = RunConfig) -> None:
    """Apply one `--set a.b=c`; the value is parsed as YAML (3 -> int, true -> bool, [1,2] -> list)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set generate.n=4.")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    model: type[BaseModel] | None = root
    node = raw
    for depth, part in enumerate(parts):
        fields = model.model_fields if model is not None else {}
        if model is not None and part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(f"--set {key}: unknown key {part!r} under {where}.{_suggest(part, fields)}")
        if depth == len(parts) - 1:
            node[part] = yaml.safe_load(text) if text.strip() else None
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth + 1])} is a value, not a section.")
        node = child
        model = _section_model(fields[part].annotation) if model is not None else None


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model of a field: `X` or `X | None`."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _suggest(name: str, fields: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(fields), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid keys: {', '.join(fields)}."


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for section in raw.values():  # accelerate launch configs, relative to the campaign file
        launcher = section.get("launcher") if isinstance(section, dict) else None
        if isinstance(launcher, dict) and isinstance(launcher.get("config_file"), str):
            path = Path(launcher["config_file"])
            if not path.is_absolute():
                launcher["config_file"] = str((base / path).resolve())
            if not Path(launcher["config_file"]).is_file():
                raise ConfigError(
                    f"launcher.config_file {launcher['config_file']!r} not found: give an accelerate config "
                    "(relative to the campaign file), e.g. accelerate/zero3.yaml from configs/."
                )
    prompts = raw.get("prompts")
    if isinstance(prompts, dict) and isinstance(prompts.get("source"), str):
        src = prompts["source"]
        if src.endswith(LOCAL_DATA_SUFFIXES) and not Path(src).is_absolute():
            prompts["source"] = str(base / src)
    evaluation = raw.get("eval") if isinstance(raw.get("eval"), dict) else {}
    for node, field in ((_at(raw, "evaluate", "prompts"), "source"), (raw.get("sft"), "data"),
                        (raw.get("data"), "source"), (evaluation.get("data"), "source")):
        if isinstance(node, dict) and isinstance(node.get(field), str):
            src = node[field]
            if src.endswith(LOCAL_DATA_SUFFIXES) and not Path(src).is_absolute():
                node[field] = str(base / src)
    if isinstance(evaluation.get("weights"), str) and evaluation["weights"].endswith((".yaml", ".yml")):
        evaluation["weights"] = str(base / evaluation["weights"])
    for node in (raw.get("reward"), evaluation.get("reward"), _at(raw, "dialogue", "user"),  # file.py:function
                 _at(raw, "evaluate", "judge")):
        if isinstance(node, dict) and isinstance(node.get("function"), str):
            module, sep, fn = node["function"].rpartition(":")
            if module.endswith(".py") and not Path(module).is_absolute():
                node["function"] = f"{base / module}{sep}{fn}"
    for node, key in ((raw.get("policy"), "model"), (raw.get("reward"), "model"), (evaluation.get("reward"), "model"),
                      (raw, "model")):
        if isinstance(node, dict) and isinstance(node.get(key), str):
            value = node[key]
            if value.startswith(("./", "../")):
                node[key] = str((base / value).resolve())


def _at(raw: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        raw = raw.get(key) if isinstance(raw, dict) else None
    return raw


def _check_sources(cfg: BaseModel) -> None:
    """Local data files named in the config exist."""
    if isinstance(cfg, RunConfig):
        sources = [("prompts.source", cfg.prompts.source)]
        if cfg.evaluate.prompts is not None:
            sources.append(("evaluate.prompts.source", cfg.evaluate.prompts.source))
        if cfg.sft is not None:
            sources.append(("sft.data", cfg.sft.data))
    else:  # a reward-model config
        sources = [(where, d.source) for where, d in (("data.source", cfg.data), ("eval.data.source", cfg.eval.data))
                   if d is not None]
    for where, src in sources:
        if src.endswith(LOCAL_DATA_SUFFIXES) and not Path(src).is_file():
            raise ConfigError(
                f"[{where}] {src!r}: file not found. Paths in a config file are relative to that file's "
                "folder; give an existing .jsonl/.json/.parquet/.csv file or a Hub dataset id."
            )


def format_validation_error(exc: ValidationError, origin: str, root: type[BaseModel] = RunConfig) -> str:
    lines = [f"{origin}: {exc.error_count()} problem(s) in the configuration:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = _model_at(err["loc"][:-1], root)
            fields = parent.model_fields if parent else {}
            lines.append(f"  [{loc}] unknown key.{_suggest(str(err['loc'][-1]), fields)}")
            continue
        if err["type"] == "missing":
            lines.append(f"  [{loc}] required but not set. Add it to the config or pass --set {loc}=...")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  [{loc}]{shown}: {msg}")
    return "\n".join(lines)


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or part not in model.model_fields:
            return None
        model = _section_model(model.model_fields[part].annotation)
    return model
