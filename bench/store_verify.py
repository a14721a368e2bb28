"""How much the remembered verification saves: re-reading a verified artifact in the same process should
cost a stat per file, not a sha256 of every byte. Prints both times and their ratio, measured in one run.

    .venv/bin/python bench/store_verify.py [--mb 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import pyarrow as pa
from measures import measure

from rebelflow.store import local
from rebelflow.store.local import Store
from rebelflow.store.refs import ArtifactRef


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="artifact size in MiB")
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    store = Store(tempfile.mkdtemp(prefix="rebelflow-bench-"))
    ref = ArtifactRef(id="bench-0000000000000000", stage="bench")
    schema = pa.schema([("blob", pa.binary())])
    per_shard = args.mb * 1024 * 1024 // args.shards
    with store.writer(ref, 1, {}, []) as w:
        for i in range(args.shards):
            w.write_shard("train", i, [{"blob": os.urandom(per_shard)}], schema)
        w.finish()
    local.forget_verifications()
    t0 = time.perf_counter()
    assert store.verify(ref) is None
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(10):
        assert store.verify(ref) is None
    again = (time.perf_counter() - t0) / 10
    print(f"artifact: {args.mb} MiB in {args.shards} shards")
    print(f"first verification (sha256 of every file): {first * 1000:.1f} ms")
    print(f"remembered verification (stat only):       {again * 1000:.3f} ms")
    print(f"ratio first/remembered: {first / again:.0f}x")
    measure("store_verify", f"re-hash / remembered verification, {args.mb} MiB", first / again, "x", at_least=100)


if __name__ == "__main__":
    main()
