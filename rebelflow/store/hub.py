"""Artifacts on the Hugging Face Hub (optional `hub:` section of a config).

After each stage its artifact folder is uploaded as `<artifact id>/` — datasets to `hub.dataset_repo`
(branch main), models to `hub.model_repo` on one branch per round (`<campaign>-r<k>`) — and the commit
sha is recorded in the artifact's manifest (`hub`) and in the campaign index. An artifact missing from
the local store is downloaded at its pinned commit instead of being made again. The dataset repo's card
lists every dataset artifact as a `datasets` config named `<campaign>-r<k>-<stage>` (so
`load_dataset(repo, "<campaign>-r1-generate")` works) with its inputs (lineage).

The token is read from $HF_TOKEN, the endpoint from $HF_ENDPOINT (default: the Hub); neither enters a
config, a parameter or a manifest. Network errors are retried with backoff; a download lands in a
temporary folder and enters the store only when complete and verified, so the store is never corrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml

from rebelflow.config.campaign import HubConfig
from rebelflow.store.local import MANIFEST, Store, write_json_atomic, write_manifest
from rebelflow.store.refs import ArtifactRef

T = TypeVar("T")
CARD = "README.md"


def api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=os.environ.get("HF_TOKEN") or None)


def with_retries(what: str, call: Callable[[], T], attempts: int = 5, first_wait: float = 1.0) -> T:
    """`call()`, retried with exponential backoff on network errors and 5xx answers."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(attempts):
        try:
            return call()
        except (httpx.TransportError, HfHubHTTPError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if isinstance(exc, HfHubHTTPError) and status is not None and status < 500 and status != 429:
                raise
            if attempt == attempts - 1:
                raise
            wait = first_wait * 2**attempt
            print(f"hub: {what} failed ({type(exc).__name__}: {str(exc)[:120]}); retrying in {wait:.0f}s", flush=True)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _target(hub: HubConfig, campaign: str, round_k: int, ref: ArtifactRef) -> tuple[str, str, str]:
    """(repo id, repo type, branch) an artifact goes to."""
    if ref.kind == "model":
        return hub.model_repo or hub.dataset_repo, "model", f"{campaign}-r{round_k}"
    return hub.dataset_repo, "dataset", "main"


def publish(hub: HubConfig, store: Store, campaign: str, round_k: int, name: str, ref: ArtifactRef) -> dict:
    """Upload the artifact (once: a manifest that already has `hub` is left alone); returns the hub record."""
    manifest = store.manifest(ref)
    if manifest.get("hub"):
        return manifest["hub"]
    repo, kind, branch = _target(hub, campaign, round_k, ref)
    client = api()
    with_retries("create repo", lambda: client.create_repo(repo, repo_type=kind, private=hub.private, exist_ok=True))
    if branch != "main":
        with_retries("create branch", lambda: client.create_branch(repo, branch=branch, repo_type=kind, exist_ok=True))
    info = with_retries("upload", lambda: client.upload_folder(
        repo_id=repo, repo_type=kind, revision=branch, folder_path=str(store.path(ref)), path_in_repo=ref.id,
        commit_message=f"{campaign} round {round_k}: {name} ({ref.id})"))
    record = {"repo": repo, "repo_type": kind, "branch": branch, "commit": info.oid, "path": ref.id}
    manifest["hub"] = record
    write_manifest(store.path(ref) / MANIFEST, manifest)
    if kind == "dataset":
        _update_card(hub, campaign, round_k, name, ref, manifest)
    return record


def _update_card(hub: HubConfig, campaign: str, round_k: int, name: str, ref: ArtifactRef, manifest: dict) -> None:
    """Add the artifact to the dataset repo's card: a `datasets` config per artifact, plus lineage."""
    from huggingface_hub import hf_hub_download

    client = api()
    try:
        path = with_retries("read card", lambda: hf_hub_download(
            hub.dataset_repo, CARD, repo_type="dataset", endpoint=client.endpoint, token=client.token,
            cache_dir=tempfile.mkdtemp(prefix="rebelflow-card-")))
        front = _front_matter(Path(path).read_text())
    except Exception as exc:  # no card yet
        if "404" not in str(exc) and "EntryNotFound" not in type(exc).__name__:
            raise
        front = {}
    entries = front.get("rebelflow_artifacts", {})
    entries[f"{campaign}-r{round_k}-{name}"] = {
        "id": ref.id, "stage": manifest["stage"], "round": round_k, "campaign": campaign,
        "splits": sorted(manifest["splits"]), "inputs": manifest["inputs"],
    }
    text = render_card(hub.dataset_repo, entries)
    with_retries("write card", lambda: client.upload_file(
        path_or_fileobj=text.encode(), path_in_repo=CARD, repo_id=hub.dataset_repo, repo_type="dataset",
        commit_message=f"card: {campaign} round {round_k} {name}"))


def _front_matter(text: str) -> dict:
    if not text.startswith("---\n"):
        return {}
    end = text.index("\n---", 4)
    return yaml.safe_load(text[4:end]) or {}


def render_card(repo: str, entries: dict[str, dict]) -> str:
    configs = [{"config_name": config, "data_files": [
        {"split": split, "path": f"{e['id']}/data/{split}-*.parquet"} for split in e["splits"]]}
        for config, e in sorted(entries.items())]
    front = yaml.safe_dump({"configs": configs, "rebelflow_artifacts": entries}, sort_keys=False)
    rows = [f"| `{config}` | `{e['id']}` | {e['stage']} | {', '.join(f'`{i}`' for i in e['inputs']) or '–'} |"
            for config, e in sorted(entries.items())]
    return (f"---\n{front}---\n\n# rebelflow artifacts\n\nEvery stage artifact of the campaigns stored here, one "
            f"folder per artifact id. Load one with `load_dataset(\"{repo}\", \"<config>\")`.\n\n"
            "| config | artifact | stage | inputs (lineage) |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")


def fetch(hub: HubConfig, store: Store, campaign: str, round_k: int, ref: ArtifactRef,
          commit: str | None = None) -> bool:
    """Download a missing artifact at its pinned commit (from the campaign index, else the branch head if
    the artifact is there); True if it is now complete in the store."""
    from huggingface_hub import snapshot_download

    repo, kind, branch = _target(hub, campaign, round_k, ref)
    client = api()
    try:
        sha = commit or with_retries("resolve", lambda: client.repo_info(repo, repo_type=kind, revision=branch).sha)
        files = with_retries("list", lambda: client.list_repo_files(repo, repo_type=kind, revision=sha))
    except Exception as exc:
        if "NotFound" in type(exc).__name__:
            return False
        raise
    if f"{ref.id}/{MANIFEST}" not in files:
        return False
    store.root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hub-", dir=store.root))  # same filesystem: the move is one rename
    try:
        with_retries("download", lambda: snapshot_download(
            repo, repo_type=kind, revision=sha, allow_patterns=[f"{ref.id}/*", f"{ref.id}/**"],
            local_dir=str(tmp), endpoint=client.endpoint, token=client.token))
        manifest = json.loads((tmp / ref.id / MANIFEST).read_text())
        manifest["hub"] = {"repo": repo, "repo_type": kind, "branch": branch, "commit": sha, "path": ref.id}
        write_manifest(tmp / ref.id / MANIFEST, manifest)
        shutil.rmtree(tmp / ref.id / ".cache", ignore_errors=True)
        target = store.path(ref)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # damaged: moved aside, never deleted
            store._quarantine(ref)
        os.replace(tmp / ref.id, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    problem = store.verify(ref)
    if problem is not None:
        store._quarantine(ref)
        raise RuntimeError(f"{ref.id} from {repo}@{sha} does not verify: {problem}")
    print(f"hub: {ref.id} downloaded from {repo}@{sha[:12]} instead of being made again", flush=True)
    return True


def pinned_commit(store: Store, campaign: str, round_k: int, name: str) -> str | None:
    """The commit the campaign index recorded for a stage, if any."""
    index = store.campaign_index(campaign) or {}
    entry = index.get("rounds", {}).get(str(round_k), {}).get(name, {})
    return (entry.get("hub") or {}).get("commit")


def record_in_index(store: Store, campaign: str, round_k: int, name: str, record: dict) -> None:
    path = store.root / "campaigns" / campaign / "index.json"
    with store.lock(f"campaign-{campaign}"):
        index = json.loads(path.read_text())
        index["rounds"][str(round_k)][name]["hub"] = record
        write_json_atomic(path, index)
