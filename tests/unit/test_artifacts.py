import json

import datasets
import pyarrow as pa
import pytest

from rebelflow.config.errors import DataError
from rebelflow.store import local
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef, fingerprint

SCHEMA = pa.schema([("x", pa.int64()), ("text", pa.string())])


def make(store: Store, name="a", rows=3, inputs=()):
    ref = ArtifactRef(id=fingerprint("stage", 1, {"name": name}, list(inputs)), stage="stage")
    with store.writer(ref, 1, {"name": name}, list(inputs)) as w:
        w.write_shard("train", 0, [{"x": i, "text": f"t{i}"} for i in range(rows)], SCHEMA)
        w.write_shard("train", 1, [{"x": 100, "text": "last"}], SCHEMA)
        w.finish(summary={"rows": rows + 1})
    return ref


def test_fingerprint_depends_on_everything_that_determines_output():
    a = ArtifactRef(id="x-1", stage="x")
    base = fingerprint("s", 1, {"k": 1, "j": 2}, [a])
    assert base == fingerprint("s", 1, {"j": 2, "k": 1}, [a])  # key order does not matter
    assert base.startswith("s-") and len(base) == 2 + 16
    others = {
        fingerprint("s", 2, {"k": 1, "j": 2}, [a]),
        fingerprint("s", 1, {"k": 9, "j": 2}, [a]),
        fingerprint("s", 1, {"k": 1, "j": 2}, [ArtifactRef(id="x-2", stage="x")]),
        fingerprint("t", 1, {"k": 1, "j": 2}, [a]),
    }
    assert base not in others and len(others) == 4


def test_artifact_layout_manifest_and_hub_loading(tmp_path):
    store = Store(tmp_path)
    ref = make(store)
    folder = store.path(ref)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rows"] == 4 and manifest["columns"] == ["x", "text"]
    assert manifest["splits"]["train"]["files"] == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert set(manifest["files"]) == {*manifest["splits"]["train"]["files"], "README.md"}
    assert {"python", "pyarrow"} <= set(manifest["versions"])
    assert "Made by the rebelflow stage `stage`" in (folder / "README.md").read_text()
    ds = datasets.load_dataset("parquet", data_files=store.data_files(ref), split="train")
    assert ds["x"] == [0, 1, 2, 100]
    assert datasets.load_dataset(str(folder), split="train")["text"][-1] == "last"  # the card's configs
    assert not (tmp_path / ".partial" / ref.id).exists()


def test_interrupted_write_keeps_finished_shards_and_publishes_nothing(tmp_path):
    store = Store(tmp_path)
    ref = ArtifactRef(id="stage-0123456789abcdef", stage="stage")
    with pytest.raises(RuntimeError, match="boom"):
        with store.writer(ref, 1, {}, []) as w:
            w.write_shard("train", 0, [{"x": 1, "text": "a"}], SCHEMA)
            raise RuntimeError("boom")
    assert not store.path(ref).exists() and not store.is_complete(ref)
    with store.writer(ref, 1, {}, []) as w:
        assert w.has_shard("train", 0) and not w.has_shard("train", 1)
        w.finish()
    assert store.read_rows(ref) == [{"x": 1, "text": "a"}]


def test_corrupt_shard_is_detected_and_moved_aside(tmp_path, caplog):
    store = Store(tmp_path)
    ref = make(store)
    shard = store.path(ref) / "data/train-00000-of-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))  # same size, different content
    assert "does not match its sha256" in store.verify(ref)
    assert not store.is_complete(ref, quarantine=True)
    assert "unusable" in caplog.text and ref.id in caplog.text
    assert not store.path(ref).exists()
    assert len(list((tmp_path / "quarantine").iterdir())) == 1


def test_missing_file_and_missing_manifest(tmp_path):
    store = Store(tmp_path)
    ref = make(store)
    (store.path(ref) / "data/train-00001-of-00002.parquet").unlink()
    assert store.verify(ref) == "data/train-00001-of-00002.parquet is missing"
    (store.path(ref) / "manifest.json").unlink()
    assert "missing (the write did not finish)" in store.verify(ref)


def test_verification_is_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    store = Store(tmp_path)
    ref = make(store)
    local.forget_verifications()
    calls = []
    real = local.sha256_file
    monkeypatch.setattr(local, "sha256_file", lambda p: calls.append(p) or real(p))
    assert store.verify(ref) is None
    hashed = len(calls)
    assert hashed == 3
    assert store.verify(ref) is None and len(calls) == hashed  # no re-hash
    (store.path(ref) / "README.md").touch()  # new mtime: hash again
    assert store.verify(ref) is None and len(calls) == 2 * hashed


def test_an_artifact_whose_input_was_remade_is_stale(tmp_path):
    store = Store(tmp_path)
    parent = make(store, "parent")
    child = make(store, "child", inputs=[parent])
    assert store.is_complete(child)
    local.forget_verifications()
    import shutil

    shutil.rmtree(store.path(parent))
    assert make(store, "parent") == parent
    assert "was made again after it" in store.verify(child)


def test_campaign_index_and_lookup(tmp_path):
    store = Store(tmp_path)
    ref = make(store)
    store.record("camp", 1, "stage", ref)
    index = store.campaign_index("camp")
    assert index["rounds"]["1"]["stage"]["id"] == ref.id
    assert store.find(ref.id[:9]) == ref and store.find(str(store.path(ref))) == ref
    with pytest.raises(KeyError, match="matches no artifact"):
        store.find("nothing")


def test_the_artifact_lock_is_exclusive_across_open_files(tmp_path):
    import fcntl

    store = Store(tmp_path)
    with store.lock("generate-abc"):
        with open(tmp_path / ".locks/generate-abc.lock", "w") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / ".locks/generate-abc.lock", "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: free again


def edit_manifest(store, ref, change, redigest=False):
    path = store.path(ref) / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    if redigest:
        manifest["digest"] = local.manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("change", [
    lambda m: m.update(rows=m["rows"] - 1),
    lambda m: m["settings"].update(name="other"),
    lambda m: m["splits"]["train"].update(rows=1),
    lambda m: m.pop("digest"),
])
def test_an_edited_manifest_is_detected_on_every_read(tmp_path, change):
    store = Store(tmp_path)
    ref = make(store)
    assert store.is_complete(ref)  # verified once, remembered
    edit_manifest(store, ref, change)
    assert "manifest.json" in store.verify(ref)
    with pytest.raises(DataError, match="manifest.json"):
        store.manifest(ref)
    assert not store.is_complete(ref, quarantine=True) and list((tmp_path / "quarantine").iterdir())


@pytest.mark.parametrize("change, problem", [
    (lambda m: m["splits"]["train"].update(rows=5), "split train has 4 rows, the manifest says 5"),
    (lambda m: m.update(rows=9), "the data has 4 rows, the manifest says 9"),
    (lambda m: m.update(columns=["x"]), "the data's columns are \\['x', 'text'\\]"),
])
def test_declared_rows_and_columns_are_checked_against_the_data(tmp_path, change, problem):
    """Even a manifest whose digest was recomputed after the edit says what its data does not hold."""
    store = Store(tmp_path)
    ref = make(store)
    edit_manifest(store, ref, change, redigest=True)
    local.forget_verifications()
    assert store.verify(ref) is not None
    assert problem.replace("\\", "") in store.verify(ref)


def test_a_format_one_manifest_is_verified_then_protected(tmp_path):
    store = Store(tmp_path)
    ref = make(store)
    edit_manifest(store, ref, lambda m: (m.pop("digest"), m.update(format=1)))
    local.forget_verifications()
    assert store.verify(ref) is None  # an artifact made before manifests carried digests stays usable
    upgraded = json.loads((store.path(ref) / "manifest.json").read_text())
    assert upgraded["digest"] == local.manifest_digest(upgraded)
    edit_manifest(store, ref, lambda m: m.update(rows=1))
    assert "edited" in store.verify(ref)


def test_a_finish_killed_after_renaming_the_shards_is_undone_on_the_next_attempt(tmp_path):
    """finish() renames shards to their final names before it writes the manifest; a kill in between must
    not leave a second set of shards for the next attempt to publish."""
    store = Store(tmp_path)
    ref = ArtifactRef(id="stage-00000000000000aa", stage="stage")
    with store.writer(ref, 1, {}, []) as w:
        w.write_shard("train", 0, [{"x": 1, "text": "a"}], SCHEMA)
        w.write_shard("train", 1, [{"x": 2, "text": "b"}], SCHEMA)
        w._finalise_shards()  # a kill right here: renamed, no manifest
        w.finished = True
    assert not store.is_complete(ref)
    (tmp_path / ".partial" / ref.id / "data" / ".train-00001.parquet.tmp").write_bytes(b"half")
    with store.writer(ref, 1, {}, []) as w:
        assert w.has_shard("train", 0) and w.has_shard("train", 1)  # resumable again
        w.write_shard("train", 1, [{"x": 2, "text": "b"}], SCHEMA)
        w.finish()
    manifest = store.manifest(ref)
    assert list(manifest["splits"]) == ["train"] and manifest["rows"] == 2
    assert store.read_rows(ref) == [{"x": 1, "text": "a"}, {"x": 2, "text": "b"}]
