"""What names an artifact: the small reference tasks pass around, and the fingerprint that is its id.

The fingerprint is sha256 of (stage name, stage code version, the part of the stage's settings that
determines its output, the ids of its inputs). `artifact_ref` is the one place it is computed: the plan,
the flows, the stage command line and each stage's `run` all call it, so they agree on every id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SMALL_FILE = 16 * 1024 * 1024


class ArtifactRef(BaseModel):
    """A small, serialisable pointer to an artifact. Tasks pass these, never datasets or models."""

    model_config = ConfigDict(frozen=True)

    id: str  # "<stage>-<hash>"; for a model outside the store "external-<hash>"
    stage: str
    kind: Literal["dataset", "model"] = "dataset"
    source: str | None = None  # external models only: local folder or Hub id
    revision: str | None = None
    chat_template: str | None = None  # external models only: the campaign's template in place of the model's

    @property
    def external(self) -> bool:
        return self.source is not None


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(stage: str, version: int, settings: dict[str, Any], inputs: list[ArtifactRef]) -> str:
    """The artifact id: stage name plus 16 hex digits of the hash of everything that determines it."""
    payload = {"stage": stage, "version": version, "settings": settings, "inputs": [r.id for r in inputs]}
    return f"{stage}-{hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(source: str, revision: str | None = None) -> str:
    """What names an external model's content. A local folder: file names, sizes and the hash of files
    under 16 MiB (configs, tokenizers); weights are identified by size, since hashing gigabytes on every
    plan would be slow. A Hub id: the id and the revision (pin one for reproducibility)."""
    path = Path(source)
    if not path.is_dir():
        return f"hub:{source}@{revision or 'main'}"
    parts = []
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        digest = sha256_file(f) if size < SMALL_FILE else f"size:{size}"
        parts.append(f"{f.relative_to(path)}:{digest}")
    return "dir:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def external_model(source: str, revision: str | None = None, chat_template: str | None = None) -> ArtifactRef:
    identity = model_identity(source, revision) + ("" if chat_template is None else f"|template:{chat_template}")
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return ArtifactRef(id=f"external-{digest}", stage="external", kind="model", source=source, revision=revision,
                       chat_template=chat_template)


def hashed_settings(settings: BaseModel) -> dict[str, Any]:
    """The part of a stage's settings that determines its output (paths and launch options excluded; a stage
    whose relevant settings depend on their values names the rest in an `unhashed()` method)."""
    unhashed = settings.unhashed() if hasattr(settings, "unhashed") else getattr(settings, "UNHASHED", set())
    return settings.model_dump(mode="json", exclude=unhashed)


def artifact_ref(name: str, version: int, kind: str, settings: BaseModel, inputs: list[ArtifactRef]) -> ArtifactRef:
    """The reference of the artifact a stage makes from `settings` and `inputs`."""
    return ArtifactRef(id=fingerprint(name, version, hashed_settings(settings), inputs), stage=name, kind=kind)


def data_identity(source: str, split: str) -> str:
    """What names a data source's content: a local file's hash, or a Hub dataset's id, revision and split."""
    if Path(source).is_file():
        return f"file:{sha256_file(Path(source))}"
    return f"{model_identity(source)}:{split}"
