"""What a user takes out of the store: a model artifact as a plain HF folder (`rebelflow export`), and a
round's evaluation samples side by side (`rebelflow samples`)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from rebelflow.config.errors import DataError
from rebelflow.store.local import Store


def export_model(store: Store, text: str, dest: Path, force: bool = False) -> Path:
    """Copy a model artifact's HF folder to `dest` with its card (README.md, its lineage appended) and
    `rebelflow.json` (id, stage, settings, lineage): ready for `from_pretrained`, `vllm serve` or a push to
    the Hub. The artifact is verified first; `dest` must be new or empty unless `force`."""
    ref = store.find(text)
    manifest = store.manifest(ref)
    if manifest["kind"] != "model":
        raise DataError(f"{ref.id} is a {manifest['kind']} artifact (stage {manifest['stage']}): export takes a model "
                        "(train, online, sft, rm_train). `rebelflow history` lists each round's policy.")
    problem = store.verify(ref)
    if problem is not None:
        raise DataError(f"{ref.id} failed verification ({problem}): re-run the campaign to remake it, then export.")
    if dest.exists() and any(dest.iterdir()) and not force:
        raise DataError(f"{dest} exists and is not empty: choose a new folder, or pass --force to replace it.")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(store.path(ref) / "model", dest)
    lineage = store.lineage(ref)
    card = (store.path(ref) / "README.md").read_text() if (store.path(ref) / "README.md").is_file() else ""
    card += "\n\n## Lineage (rebelflow)\n\n" + "".join(f"- `{item['id']}` ({item['created_at']})\n" for item in lineage)
    (dest / "README.md").write_text(card)
    (dest / "rebelflow.json").write_text(json.dumps({"id": ref.id, "stage": manifest["stage"],
                                                     "settings": manifest["settings"], "lineage": lineage}, indent=1))
    return dest


def round_samples(store: Store, campaign: str, k: int) -> list[dict[str, Any]]:
    """Round k's evaluation prompts with every sample of the round's policy and of the baseline (round 0's
    samples, the same seeds) and their rewards; a dialogue's samples are its replies, turn by turn."""
    index = store.campaign_index(campaign)
    if index is None:
        raise DataError(f"no campaign {campaign!r} in {store.root}: `rebelflow history` lists the campaigns.")
    rounds = index["rounds"]
    if str(k) not in rounds or "eval_score" not in rounds[str(k)]:
        have = sorted(int(r) for r, stages in rounds.items() if "eval_score" in stages and r != "0")
        raise DataError(f"campaign {campaign!r} has no evaluation samples for round {k}; rounds with them: {have}.")
    new = store.read_rows(store.find(rounds[str(k)]["eval_score"]["id"]))
    base = {r["prompt_id"]: r for r in store.read_rows(store.find(rounds["0"]["eval_score"]["id"]))}
    return [{"prompt_id": r["prompt_id"], "prompt": r["messages"][-1]["content"] if r["messages"] else "",
             "policy": _samples(r), "baseline": _samples(base[r["prompt_id"]])}
            for r in new if r["prompt_id"] in base]


def _samples(row: dict) -> list[dict[str, Any]]:
    """(response, reward) of every sample; for a dialogue every assistant reply after the prompt."""
    if "rollout1" in row:
        start = len(row["messages"])
        replies = [m["content"] for m in row["rollout1"][start:] if m["role"] == "assistant"]
        return [{"response": text, "reward": _num(reward)} for text, reward in zip(replies, row["rewards1"], strict=False)]
    return [{"response": text, "reward": _num(reward)} for text, reward in zip(row["responses"], row["rewards"], strict=True)]


def _num(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
