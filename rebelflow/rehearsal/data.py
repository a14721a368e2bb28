"""Generated stand-ins for a preset's Hub datasets: JSONL files with the columns the config names, built
deterministically from the sentences shipped with the package, so a rehearsal reads what the real data
would give it (a text column or a message list, ids, later user turns, preference pairs, RewardBench rows
with the weighting's subset names)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from rebelflow.ml.tiny import corpus_lines


class Sentences:
    """An endless, deterministic walk through the shipped corpus."""

    def __init__(self, offset: int = 0):
        self.lines, self.i = corpus_lines(), offset

    def __call__(self, k: int = 1) -> str:
        out = [self.lines[(self.i + j) % len(self.lines)] for j in range(k)]
        self.i += k
        return " ".join(out)


def write_jsonl(rows: list[dict], folder: Path, name: str) -> Path:
    """<folder>/<name>-<digest of the rows>.jsonl, written once and atomically: the same sample keeps its
    file (so fingerprints stay put), another sample gets another file."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path = folder / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.jsonl"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def first_rows(source: str, count: int) -> list[dict]:
    """The first `count` rows of a local .jsonl/.json/.parquet/.csv file."""
    import datasets

    builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}[Path(source).suffix]
    data = datasets.load_dataset(builder, data_files=source, split="train")
    return data.select(range(min(count, len(data)))).to_list()


def prompt_rows(count: int, prompt_column: str | None, messages_column: str | None, id_column: str | None,
                first_turn_only: bool = False, turns_column: str | None = None, later_turns: int = 0) -> list[dict]:
    """Prompt rows as a dataset of the preset's shape would hold them."""
    say = Sentences()
    rows = []
    for i in range(count):
        row: dict = {id_column: f"rehearsal-{i:05d}"} if id_column else {}
        if prompt_column:
            row[prompt_column] = say(2)
        else:
            messages = [{"role": "user", "content": say(2)}]
            if first_turn_only:  # a recorded dialogue: only its first user turn is kept
                messages += [{"role": "assistant", "content": say(1)}, {"role": "user", "content": say(1)}]
            row[messages_column] = messages
        if turns_column and turns_column == messages_column:  # one recorded dialogue holds the later user turns
            row[turns_column] = [row[turns_column][0]] + [
                {"role": role, "content": say(1)} for _ in range(later_turns) for role in ("assistant", "user")]
        elif turns_column:
            row[turns_column] = [say(1) for _ in range(later_turns)]
        rows.append(row)
    return rows


def preference_rows(count: int, chosen: str, rejected: str) -> list[dict]:
    """Preference pairs in the messages format: chosen and rejected share the prompt."""
    say = Sentences(7)
    rows = []
    for _ in range(count):
        prompt = {"role": "user", "content": say(2)}
        rows.append({chosen: [prompt, {"role": "assistant", "content": say(2)}],
                     rejected: [prompt, {"role": "assistant", "content": say(1)}]})
    return rows


def rewardbench_rows(subsets: list[str], per_subset: int, prompt: str, chosen: str, rejected: str,
                     subset_column: str | None) -> list[dict]:
    """RewardBench-format rows (texts), `per_subset` for each subset name of the weighting."""
    say = Sentences(13)
    rows = []
    for subset in subsets:
        for _ in range(per_subset):
            row = {prompt: say(2), chosen: say(2), rejected: say(1)}
            if subset_column:
                row[subset_column] = subset
            rows.append(row)
    return rows
