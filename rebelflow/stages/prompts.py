"""prompts: the round's prompt set as chat messages. Consumes a local .jsonl/.json/.parquet/.csv file or a
Hub dataset (`datasets.load_dataset`); produces one row per prompt: `prompt_id`, `messages`
(list of {role, content}, ending with a user turn), `source_row`, `user_turns` (dataset users: the
later user messages of the dialogue, from `dialogue.user.turns_column`).

A messages column may hold {role, content} or ShareGPT {from, value} lists, or an Anthropic-HH transcript
("\n\nHuman: …\n\nAssistant: …"). A turns column may hold a list of strings, a message list or an HH
transcript; from the last two, the user messages after the first are the later user turns, so one HH
column can give both the prompt (`first_turn_only: true`) and the turns.

Rows without a usable prompt are dropped and counted per reason. With `selection: same` every round
takes the same first `per_round` prompts (one shared artifact); with `disjoint` round k takes slice k.
The fingerprint names the file by its content hash, so moving the file does not invalidate anything.

Run alone: python -m rebelflow.stages.prompts configs/demo-rebel.yaml --round 1
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from rebelflow.config.campaign import PromptsConfig, Section
from rebelflow.config.errors import DataError
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, artifact_ref, hashed_settings, model_identity, sha256_file

NAME, VERSION, KIND = "prompts", 5, "dataset"  # v5: an open final "Assistant:" is the prompt's end
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SCHEMA = pa.schema(
    [("prompt_id", pa.string()), ("messages", MESSAGES), ("source_row", pa.int64()), ("user_turns", pa.list_(pa.string()))]
)
ROLES = {"system", "user", "assistant"}
# ShareGPT-style messages ({"from": ..., "value": ...}), as in UltraInteract and many SFT sets
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def parse_hh(text: str) -> list[dict[str, str]] | None:
    """An Anthropic-HH transcript as {role, content} messages; None when the text is not one."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [{"role": roles[who], "content": body.strip()} for who, body in zip(parts[1::2], parts[2::2], strict=True)]
    if len(messages) > 1 and messages[-1] == {"role": "assistant", "content": ""}:
        messages.pop()  # a prompt written as a transcript ends with an open "Assistant:" (Nectar)
    return messages


def as_messages(raw: object) -> list[dict[str, str] | None] | None:
    """A column value as a message list (entries None where malformed); None when it is no list at all."""
    if isinstance(raw, str):
        return parse_hh(raw)
    return [normalise(m) for m in raw] if isinstance(raw, list) else None


def later_user_turns(raw: object) -> list[str] | None:
    """The later user turns of a dialogue from a turns column value (see the module docstring); None when
    the value is neither a list of strings, a message list nor an HH transcript."""
    if raw is None:
        return []
    if isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        return list(raw)
    messages = as_messages(raw)
    if messages is None or any(m is None for m in messages):
        return None
    return [m["content"] for m in messages if m["role"] == "user"][1:]


def normalise(message: object) -> dict[str, str] | None:
    """{role, content} from a {role, content} or {from, value} message; None if it is neither."""
    if not isinstance(message, dict):
        return None
    if message.get("role") in ROLES and isinstance(message.get("content"), str):
        return {"role": message["role"], "content": message["content"]}
    if message.get("from") in SHAREGPT_ROLES and isinstance(message.get("value"), str):
        return {"role": SHAREGPT_ROLES[message["from"]], "content": message["value"]}
    return None


class Settings(Section):
    UNHASHED: ClassVar[set[str]] = {"source"}

    source: str
    source_identity: str
    split: str
    revision: str | None
    prompt_column: str | None
    messages_column: str | None
    id_column: str | None
    system_prompt: str | None
    first_turn_only: bool = False
    shuffle_seed: int | None
    start: int
    stop: int | None
    user_turns_column: str | None = None  # dataset users: the later user turns of each dialogue

    @classmethod
    def from_config(cls, cfg: PromptsConfig, round_k: int, user_turns_column: str | None = None) -> Settings:
        start, stop = 0, cfg.per_round
        if cfg.selection == "disjoint":
            start, stop = (round_k - 1) * cfg.per_round, round_k * cfg.per_round
        start, stop = start + cfg.offset, None if stop is None else stop + cfg.offset
        fields = cfg.model_dump(exclude={"per_round", "selection", "offset"})
        return cls(
            **fields, source_identity=source_identity(cfg), start=start, stop=stop, user_turns_column=user_turns_column
        )


def source_identity(cfg: PromptsConfig) -> str:
    """A file by its content hash; a local dataset folder by its files; a Hub id by id, split, revision."""
    if cfg.is_local():
        return f"file:{sha256_file(Path(cfg.source))}"
    return f"{model_identity(cfg.source, cfg.revision)}:{cfg.split}"


def read_dataset(source: str, split: str = "train", revision: str | None = None, what: str = "data"):
    """A local .jsonl/.json/.parquet/.csv file or a dataset id/folder as a `datasets.Dataset`; any
    problem becomes a DataError that names the source."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if source.endswith(tuple(".jsonl .json .parquet .csv".split())):
            path = Path(source)
            if path.stat().st_size == 0 or not path.read_bytes().strip():
                raise DataError(f"{what} {source} is empty. Give a file with one example per row.")
            if path.suffix == ".jsonl":
                check_jsonl(path, what)
            builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}[path.suffix[1:]]
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        return datasets.load_dataset(source, split=split, revision=revision)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types for unreadable files; keep its words
        raise DataError(f"cannot read {what} {source}: {type(exc).__name__}: {exc}") from exc


def check_jsonl(path: Path, what: str) -> None:
    """DataError naming the first line (1-based, as editors count) that is not one JSON object."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{what} {path}: line {number} is not valid JSON ({exc.msg}, column {exc.colno}). Fix or "
                    "remove that line: each line must hold one JSON object."
                ) from None
            if not isinstance(value, dict):
                raise DataError(
                    f"{what} {path}: line {number} holds a JSON {type(value).__name__}, not an object. Each line "
                    'must be one JSON object, e.g. {"prompt": "..."}.'
                )


def require_columns(ds, source: str, wanted: dict[str, str | None]) -> None:
    """DataError naming the first configured column (config key -> column) that the data lacks."""
    for key, column in wanted.items():
        if column is not None and column not in ds.column_names:
            raise DataError(
                f"{source} has no column {column!r} (columns: {ds.column_names}). Set {key} to the column "
                "that holds it."
            )


def load_rows(s: Settings) -> list[dict[str, Any]]:
    ds = read_dataset(s.source, s.split, s.revision, what="prompts file")
    require_columns(ds, f"prompts {s.source}", {"prompts.prompt_column": s.prompt_column,
                                                "prompts.messages_column": s.messages_column,
                                                "dialogue.user.turns_column": s.user_turns_column})
    return ds.to_list()


def to_messages(s: Settings, row: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str | None]:
    """The row's conversation, or (None, reason) when it holds no usable prompt."""
    if s.prompt_column:
        text = row.get(s.prompt_column)
        if not isinstance(text, str) or not text.strip():
            return None, "no prompt"
        messages = [{"role": "user", "content": text}]
    else:
        raw = row.get(s.messages_column)
        if not raw:
            return None, "no prompt"
        messages = as_messages(raw) or [None]
        if any(m is None for m in messages):
            return None, "malformed messages"
        if s.first_turn_only:
            first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first_user is None:
                return None, "no prompt"
            messages = [m for m in messages[:first_user] if m["role"] == "system"] + [messages[first_user]]
        if messages[-1]["role"] != "user":
            return None, "last message is not from the user"
    if s.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": s.system_prompt}, *messages]
    return messages, None


def select(s: Settings, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter]:
    dropped: Counter = Counter()
    kept, seen = [], set()
    for i, row in enumerate(rows):
        messages, reason = to_messages(s, row)
        pid = str(row.get(s.id_column)) if s.id_column and row.get(s.id_column) is not None else f"row-{i}"
        if reason is None and pid in seen:
            reason = "duplicate id"
        turns = later_user_turns(row.get(s.user_turns_column)) if s.user_turns_column else []
        if reason is None and turns is None:
            reason = "malformed user turns"
        if reason:
            dropped[reason] += 1
            continue
        seen.add(pid)
        kept.append({"prompt_id": pid, "messages": messages, "source_row": i, "user_turns": turns})
    if not kept:
        raise DataError(
            f"no usable prompt in {s.source} ({len(rows)} rows; dropped: {dict(dropped)}). Check "
            "prompts.prompt_column / messages_column."
        )
    if s.shuffle_seed is not None:
        random.Random(s.shuffle_seed).shuffle(kept)
    if s.stop is not None and s.stop > len(kept):
        raise DataError(
            f"this round takes prompts {s.start}..{s.stop - 1}, but {s.source} has {len(kept)} usable prompts. "
            "Lower prompts.per_round (or rounds with selection: disjoint), or use selection: same."
        )
    return kept[s.start : s.stop], dropped


def run(settings: Settings, *, store: Store) -> ArtifactRef:
    ref = artifact_ref(NAME, VERSION, KIND, settings, [])
    if store.is_complete(ref, quarantine=True):
        return ref
    rows = load_rows(settings)
    chosen, dropped = select(settings, rows)
    with store.writer(ref, VERSION, hashed_settings(settings), []) as w:
        w.write_shard("train", 0, chosen, SCHEMA)
        digest = hashlib.sha256(",".join(r["prompt_id"] for r in chosen).encode()).hexdigest()[:12]
        w.finish(
            summary={
                "rows read": len(rows),
                "dropped": dict(dropped),
                "prompts": len(chosen),
                "slice": [settings.start, settings.stop],
                "prompt ids digest": digest,
                "sample": [{"prompt_id": r["prompt_id"], "prompt": r["messages"][-1]["content"]} for r in chosen[:5]],
            },
            card=f"Prompts {settings.start}..{settings.stop} of {settings.source}.",
        )
    return ref


if __name__ == "__main__":
    from rebelflow.running.stage_cli import main

    raise SystemExit(main(NAME))
