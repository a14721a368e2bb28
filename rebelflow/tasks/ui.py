"""What each stage shows in the Prefect UI: a summary table, filter counts, reward statistics and sample
rows, read from the artifact's manifest. Called from flow bodies, so cached runs still show them."""

from __future__ import annotations

import json
import re
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from rebelflow.artifacts import ArtifactRef, Store


def artifact_key(*parts: Any) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")[:100]


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (dict, list)):
        return json.dumps(value)[:200]
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "…"
    return value


def publish_stage(campaign: str, round_k: int, stage: str, ref: ArtifactRef, store: Store, seconds: float) -> None:
    manifest = store.manifest(ref)
    summary = dict(manifest.get("summary", {}))
    sample = summary.pop("sample", None)
    counts = {k: v for k, v in summary.items() if isinstance(v, dict)}
    lines = [
        f"### {stage} · round {round_k} · `{ref.id}`",
        f"Stored at `{store.path(ref)}` · {manifest.get('rows', 0)} rows · made {manifest['created_at']} · "
        f"this run: {seconds:.1f}s",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in summary.items() if k not in counts),
    ]
    for name, table in counts.items():  # filter counts, drops, invalid reasons: one row per reason
        lines += ["", f"#### {name}", "", "| reason | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in table.items()] or ["| (none) | 0 |"]
    lines += ["", "Inputs: " + (", ".join(f"`{i}`" for i in manifest["inputs"]) or "none")]
    key = artifact_key(campaign, f"r{round_k}", stage)
    create_markdown_artifact("\n".join(lines), key=key, description=f"{stage} summary, round {round_k}")
    if sample:
        rows = [{k: _cell(v) for k, v in row.items()} for row in sample]
        create_table_artifact(rows, key=f"{key}-sample", description=f"{stage} sample rows, round {round_k}")


def publish_campaign(campaign: str, records: list[dict[str, Any]]) -> None:
    rows = [{k: _cell(v) for k, v in r.items()} for r in records]
    create_table_artifact(rows, key=artifact_key(campaign, "summary"), description=f"campaign {campaign}: stages")
