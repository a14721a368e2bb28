"""AlpacaEval-style reference outputs: a JSON list (AlpacaEval's own files, e.g. alpaca_eval_gpt4_baseline.json)
or JSONL of {instruction, output, …}, optionally with each instruction's `instruction_difficulty` (the LC
GLM's difficulty term, judges.length_control)."""

from __future__ import annotations

import json
from pathlib import Path

from rebelflow.config.errors import DataError


def read_reference(path: str | Path, limit: int | None = None) -> list[dict]:
    """The reference file's rows: instruction, output and, when it has one, instruction_difficulty."""
    path = Path(path)
    text = path.read_text()
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()
                                                                        if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON or JSONL ({exc}). Give AlpacaEval's reference outputs: a list of "
                        "{instruction, output}.") from None
    missing = [i for i, r in enumerate(rows) if not isinstance(r, dict) or not r.get("instruction") or "output" not in r]
    if missing or not rows:
        raise DataError(f"{path}: {len(missing)} of {len(rows)} rows lack an instruction or an output (first: row "
                        f"{missing[0] if missing else 0}). Each row needs `instruction` and `output` (the reference's answer).")
    return rows[:limit]
