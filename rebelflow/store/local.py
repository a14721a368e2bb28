"""The local artifact store: the directory, its writer, manifests, verification, locks and the campaign index.

Layout under the store root:

    artifacts/<stage>-<hash>/   complete artifacts: data/*.parquet or model/, README.md, manifest.json
    .partial/<stage>-<hash>/    an artifact being written; finished shards survive an interruption
    quarantine/                 corrupt artifacts moved aside (never deleted) before they are re-made
    campaigns/<name>/           index.json (round -> stage -> artifact id), summary.json, summary.png

The hash is the fingerprint (`store.refs`). `manifest.json` is written last, so its presence means complete; reading verifies it and the
sha256 of every file. A verification is remembered by (file, size, mtime) for the life of the process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rebelflow.config.errors import DataError
from rebelflow.store.refs import ArtifactRef, canonical_json, sha256_file
from rebelflow.store.resources import usage

log = logging.getLogger("rebelflow.store")

MANIFEST = "manifest.json"
SHARD = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})\.parquet$")  # while the stage writes
FINAL_SHARD = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-\d{5}\.parquet$")  # once finished
FORMAT_VERSION = 2  # 2: the manifest carries its own digest (format-1 manifests are upgraded once verified)
_VERIFIED: dict[str, tuple] = {}


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its `digest` entry: an edited manifest no longer matches it."""
    return hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k != "digest"}).encode()).hexdigest()


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write a manifest atomically with its digest (every writer of a manifest goes through here)."""
    write_json_atomic(path, {**manifest, "digest": manifest_digest(manifest)})


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """None if the manifest's digest matches its content (or it is a format-1 manifest, which has none)."""
    if "digest" not in manifest:
        return None if manifest.get("format") == 1 else "manifest.json has no digest"
    if manifest["digest"] != manifest_digest(manifest):
        return "manifest.json was edited after it was written (its digest does not match)"
    return None


def forget_verifications() -> None:
    """Forget which artifacts this process has verified, so the next read hashes every file again."""
    _VERIFIED.clear()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("rebelflow", "torch", "transformers", "datasets", "pyarrow", "tokenizers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class Store:
    """A local directory of artifacts (embedded, no service)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # ------------------------------------------------------------------ paths and lookup
    def path(self, ref: ArtifactRef) -> Path:
        return self.root / "artifacts" / ref.id

    def model_path(self, ref: ArtifactRef) -> str:
        """What `from_pretrained` takes for a model ref: the store folder, or the external source."""
        return ref.source if ref.external else str(self.path(ref) / "model")

    def manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        """The artifact's manifest; its digest is checked on every read (an edited one raises)."""
        path = self.path(ref) / MANIFEST
        manifest = json.loads(path.read_text())
        problem = manifest_problem(manifest)
        if problem is not None:
            raise DataError(f"{path}: {problem}. Delete the artifact's folder, or run its stage again, to remake it.")
        return manifest

    def find(self, text: str) -> ArtifactRef:
        """Resolve an artifact id, a unique id prefix or an artifact folder path."""
        candidate = Path(text)
        if (candidate / MANIFEST).is_file():
            data = json.loads((candidate / MANIFEST).read_text())
            return ArtifactRef(id=data["id"], stage=data["stage"], kind=data["kind"])
        base = self.root / "artifacts"
        is_id = base.is_dir() and text and "/" not in text and not text.startswith(".")  # a path is no id prefix
        matches = sorted(p.name for p in base.glob(f"{text}*") if (p / MANIFEST).is_file()) if is_id else []
        if len(matches) != 1:
            what = "no artifact" if not matches else f"{len(matches)} artifacts ({', '.join(matches[:5])})"
            raise KeyError(f"{text!r} matches {what} in {base}. Give a full id (see `rebelflow plan`).")
        data = json.loads((base / matches[0] / MANIFEST).read_text())
        return ArtifactRef(id=data["id"], stage=data["stage"], kind=data["kind"])

    # ------------------------------------------------------------------ verification
    def verify(self, ref: ArtifactRef) -> str | None:
        """None if the artifact is complete and intact, else a sentence saying what is wrong."""
        if ref.external:
            return None
        folder = self.path(ref)
        mf = folder / MANIFEST
        if not folder.is_dir():
            return "not in the store"
        if not mf.is_file():
            return f"{mf} is missing (the write did not finish)"
        try:
            manifest = json.loads(mf.read_text())
            files = manifest["files"]
        except (ValueError, KeyError, TypeError) as exc:
            return f"{mf} is unreadable ({exc})"
        problem = manifest_problem(manifest)
        if problem is not None:
            return problem
        for input_id, made in manifest.get("inputs_made", {}).items():
            other = self.root / "artifacts" / input_id / MANIFEST
            if other.is_file() and json.loads(other.read_text()).get("made") != made:
                return f"its input {input_id} was made again after it, so it is stale"
        snapshot = []
        for rel in sorted(files):
            p = folder / rel
            if not p.is_file():
                return f"{rel} is missing"
            st = p.stat()
            if st.st_size != files[rel]["size"]:
                return f"{rel} has {st.st_size} bytes, the manifest says {files[rel]['size']}"
            snapshot.append((rel, st.st_size, st.st_mtime_ns))
        key = str(folder)
        if _VERIFIED.get(key) == tuple(snapshot):
            return None
        for rel in sorted(files):
            if sha256_file(folder / rel) != files[rel]["sha256"]:
                return f"{rel} does not match its sha256 in the manifest (corrupt or edited)"
        problem = declared_shape_problem(folder, manifest)
        if problem is not None:
            return problem
        if "digest" not in manifest:  # a verified format-1 artifact: protect its manifest from now on
            write_manifest(mf, manifest)
        _VERIFIED[key] = tuple(snapshot)
        return None

    def is_complete(self, ref: ArtifactRef, quarantine: bool = False) -> bool:
        """True if a verified artifact exists. A damaged one is reported and, if asked, moved aside."""
        problem = self.verify(ref)
        if problem is None:
            return True
        if problem != "not in the store":
            log.warning("artifact %s is unusable: %s; it will be made again", ref.id, problem)
            if quarantine:
                self._quarantine(ref)
        return False

    def _quarantine(self, ref: ArtifactRef) -> None:
        dest = self.root / "quarantine" / f"{ref.id}-{int(time.time())}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(ref), dest)
        _VERIFIED.pop(str(self.path(ref)), None)
        log.warning("moved the old artifact aside to %s", dest)

    # ------------------------------------------------------------------ reading
    def data_files(self, ref: ArtifactRef, split: str = "train") -> list[str]:
        return [str(self.path(ref) / f) for f in self.manifest(ref)["splits"].get(split, {}).get("files", [])]

    def read_table(self, ref: ArtifactRef, split: str = "train") -> pa.Table:
        files = self.data_files(ref, split)
        if not files:
            return pa.table({})
        return pa.concat_tables(pq.read_table(f) for f in files)

    def read_rows(self, ref: ArtifactRef, split: str = "train") -> list[dict[str, Any]]:
        return self.read_table(ref, split).to_pylist()

    def lineage(self, ref: ArtifactRef) -> list[dict[str, Any]]:
        """Every ancestor of an artifact, nearest first: id, stage, created_at."""
        out, todo, seen = [], [ref.id], set()
        while todo:
            current = todo.pop(0)
            if current in seen or current.startswith("external-"):
                continue
            seen.add(current)
            mf = self.root / "artifacts" / current / MANIFEST
            data = json.loads(mf.read_text()) if mf.is_file() else {"id": current, "stage": "?", "inputs": []}
            out.append({"id": current, "stage": data["stage"], "created_at": data.get("created_at")})
            todo.extend(data.get("inputs", []))
        return out

    # ------------------------------------------------------------------ writing
    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock across processes (flock on <root>/.locks/<name>.lock), e.g. so two campaigns
        that share an artifact do not make it twice at once: the second waits, then finds it complete."""
        path = self.root / ".locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process that holds %s", path)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def writer(
        self, ref: ArtifactRef, version: int, settings: dict[str, Any], inputs: list[ArtifactRef]
    ) -> Iterator[ArtifactWriter]:
        """Write an artifact into .partial/<id>; on success publish it with one rename."""
        w = ArtifactWriter(self, ref, version, settings, inputs)
        yield w
        if not w.finished:
            raise RuntimeError(f"stage code did not call finish() for {ref.id}")

    # ------------------------------------------------------------------ campaign index
    def record(self, campaign: str, round_k: int, stage: str, ref: ArtifactRef, state: str = "completed") -> None:
        path = self.root / "campaigns" / campaign / "index.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock(f"campaign-{campaign}"):
            index = json.loads(path.read_text()) if path.is_file() else {"campaign": campaign, "rounds": {}}
            entry = {"id": ref.id, "state": state, "updated_at": _now()}
            index["rounds"].setdefault(str(round_k), {})[stage] = entry
            index["updated_at"] = _now()
            write_json_atomic(path, index)

    def campaign_index(self, campaign: str) -> dict[str, Any] | None:
        path = self.root / "campaigns" / campaign / "index.json"
        return json.loads(path.read_text()) if path.is_file() else None


class ArtifactWriter:
    """Collects an artifact's files in a temporary sibling folder, then publishes it atomically."""

    def __init__(
        self, store: Store, ref: ArtifactRef, version: int, settings: dict[str, Any], inputs: list[ArtifactRef]
    ):
        self.store, self.ref, self.version, self.settings, self.inputs = store, ref, version, settings, inputs
        self.tmp = store.root / ".partial" / ref.id
        (self.tmp / "data").mkdir(parents=True, exist_ok=True)
        self._recover()
        self.started = time.time()
        self.finished = False

    def _recover(self) -> None:
        """Undo what a killed attempt's finish() left half done: shards renamed to their final names go back
        to the names the stage resumes by; half-written temporary files go."""
        for p in (self.tmp / "data").iterdir():
            final = FINAL_SHARD.match(p.name)
            if final:
                os.replace(p, p.with_name(f"{final['split']}-{final['index']}.parquet"))
            elif p.name.startswith("."):
                p.unlink()

    def shard_path(self, split: str, index: int) -> Path:
        return self.tmp / "data" / f"{split}-{index:05d}.parquet"

    def has_shard(self, split: str, index: int) -> bool:
        """True if an earlier, interrupted run of this same artifact already finished this shard."""
        return self.shard_path(split, index).is_file()

    def read_shard(self, split: str, index: int) -> pa.Table:
        return pq.read_table(self.shard_path(split, index))

    def write_shard(self, split: str, index: int, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
        final = self.shard_path(split, index)
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        os.replace(tmp, final)

    def model_dir(self) -> Path:
        path = self.tmp / "model"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def finish(self, summary: dict[str, Any] | None = None, card: str = "") -> ArtifactRef:
        splits = self._finalise_shards()
        files = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                rel = str(p.relative_to(self.tmp))
                files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        first = next((s for s in splits.values() if s["files"]), None)
        columns = pq.read_schema(self.tmp / first["files"][0]).names if first else []
        manifest = {
            "format": FORMAT_VERSION,
            "id": self.ref.id,
            "stage": self.ref.stage,
            "kind": self.ref.kind,
            "code_version": self.version,
            "settings": self.settings,
            "inputs": [r.id for r in self.inputs],
            "input_sources": {r.id: r.source for r in self.inputs if r.external},
            # which making of each input this was built from: re-making an input makes this stale
            "inputs_made": {r.id: self.store.manifest(r)["made"] for r in self.inputs if not r.external},
            "made": uuid.uuid4().hex,
            "splits": splits,
            "rows": sum(s["rows"] for s in splits.values()),
            "columns": columns,
            "files": files,
            "created_at": _now(),
            "timings": {"seconds": round(time.time() - self.started, 3)},
            "resources": usage(),
            "versions": library_versions(),
            "summary": summary or {},
        }
        (self.tmp / "README.md").write_text(_card(manifest, card))
        manifest["files"]["README.md"] = {
            "sha256": sha256_file(self.tmp / "README.md"),
            "size": (self.tmp / "README.md").stat().st_size,
        }
        write_manifest(self.tmp / MANIFEST, manifest)  # last: its presence means complete
        dest = self.store.path(self.ref)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # an unusable leftover (verified absent by the caller): keep it, out of the way
            self.store._quarantine(self.ref)
        os.replace(self.tmp, dest)
        self.finished = True
        return self.ref

    def _finalise_shards(self) -> dict[str, dict[str, Any]]:
        """Rename shards to the Hub convention `data/<split>-00000-of-00003.parquet` and count rows."""
        by_split: dict[str, list[Path]] = {}
        for p in sorted((self.tmp / "data").glob("*.parquet")):
            shard = SHARD.match(p.name)
            if shard is None:
                raise RuntimeError(f"{p} is not a shard this writer wrote (a bug)")
            by_split.setdefault(shard["split"], []).append(p)
        splits = {}
        for split, paths in by_split.items():
            names, rows = [], 0
            for i, p in enumerate(paths):
                name = f"data/{split}-{i:05d}-of-{len(paths):05d}.parquet"
                os.replace(p, self.tmp / name)
                names.append(name)
                rows += pq.read_metadata(self.tmp / name).num_rows
            splits[split] = {"files": names, "rows": rows}
        if not any((self.tmp / "data").iterdir()):
            (self.tmp / "data").rmdir()
        return splits


def declared_shape_problem(folder: Path, manifest: dict[str, Any]) -> str | None:
    """None if the rows and columns the manifest declares are those of its parquet files."""
    total = 0
    for split, info in manifest.get("splits", {}).items():
        rows = sum(pq.read_metadata(folder / f).num_rows for f in info["files"])
        if rows != info["rows"]:
            return f"split {split} has {rows} rows, the manifest says {info['rows']}"
        total += rows
    if manifest.get("splits") and total != manifest.get("rows"):
        return f"the data has {total} rows, the manifest says {manifest.get('rows')}"
    first = next((info["files"][0] for info in manifest.get("splits", {}).values() if info["files"]), None)
    columns = pq.read_schema(folder / first).names if first else []
    if columns != manifest.get("columns", []):
        return f"the data's columns are {columns}, the manifest says {manifest.get('columns')}"
    return None


def _card(manifest: dict[str, Any], text: str) -> str:
    rows = ", ".join(f"{k}: {v['rows']} rows" for k, v in manifest["splits"].items()) or "a model folder"
    inputs = ", ".join(manifest["inputs"]) or "no inputs"
    configs = "".join(
        f"  - split: {k}\n    path: \"data/{k}-*.parquet\"\n" for k in manifest["splits"]
    )
    front = f"---\nconfigs:\n- config_name: default\n  data_files:\n{configs}---\n\n" if configs else ""
    return (
        f"{front}# {manifest['id']}\n\n"
        f"Made by the rebelflow stage `{manifest['stage']}` (code version {manifest['code_version']}) "
        f"on {manifest['created_at']} from {inputs}. It holds {rows}.\n\n{text}\n\n"
        "`manifest.json` lists the settings, the inputs, the library versions and the sha256 of every file.\n"
    )
