"""Giving every cell of a hierarchical selection its rows: read from the store directly (what the cells did
before: ``EmbeddingStore.embeddings_at``, which reads every shard holding one of the cell's rows, so each
cell reads the whole store) against one regroup pass and each cell's own row groups
(``activeft.select.cells.regroup`` and ``read_cell``). Each way runs in a process of its own (the same
machine, one after the other): seconds, peak resident memory, bytes read and written.

    python benchmarks/cells_io.py 1000000 128 4,16,64 benchmarks/results/cells-io-1m-cpu.json

The cells are a uniform random cut of the rows, as the k-means cells are with respect to the store's
order (any cell has rows in every shard).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

import activeft
from activeft.select.cells import read_cell, regroup


def phase(store_uri: str, cells: int, way: str) -> dict:
    store = activeft.EmbeddingStore(store_uri)
    unit = np.random.default_rng(0).integers(0, cells, len(store))
    start, read, written = time.perf_counter(), 0, 0
    checksum = 0.0
    if way == "store":
        sizes = [os.path.getsize(os.path.join(store_uri, s["name"])) for s in store.shards]
        starts = [lo for lo, _ in store.shard_bounds]
        for c in range(cells):
            rows = np.flatnonzero(unit == c)
            x = store.embeddings_at(rows)
            checksum += float(x[:, 0].sum())
            read += sum(sizes[i] for i in np.unique(np.searchsorted(starts, rows, side="right") - 1))
    else:
        where = tempfile.mkdtemp(dir=os.path.dirname(store_uri))
        none = np.zeros(0, np.int64)
        files = {c: f for c, (f, _, _) in regroup(store, where, group=unit, exclude=none, dropped=none)[0].items()}
        read += sum(os.path.getsize(os.path.join(store_uri, s["name"])) for s in store.shards)
        written = sum(os.path.getsize(f) for f in {f for fs in files.values() for f in fs})
        for c in range(cells):
            rows, x = read_cell(files[c], c)
            checksum += float(x[:, 0].sum())
            for f in files[c]:
                meta = pq.ParquetFile(f).metadata
                read += sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)
                            if meta.row_group(g).column(0).statistics.min == c)
    with open("/proc/self/status") as f:  # this process's high-water mark (ru_maxrss would count the fork's)
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return {"seconds": round(time.perf_counter() - start, 2), "bytes_read": read, "bytes_written": written,
            "checksum": round(checksum, 3), "peak_rss_mb": round(peak / 1024)}


def main(n: int, d: int, cells: list[int], output: str | None) -> None:
    work = tempfile.mkdtemp(prefix="cells-io-")
    x = np.random.default_rng(0).normal(size=(n, d)).astype("float32")
    np.save(f"{work}/x.npy", x)
    del x
    with open(f"{work}/ids.txt", "w") as f:
        f.write("".join(f"r{i}\n" for i in range(n)))
    store = activeft.import_embeddings(f"{work}/x.npy", f"{work}/store", ids=f"{work}/ids.txt",
                                       partition_size=100_000)
    store_bytes = sum(os.path.getsize(os.path.join(store.uri, s["name"])) for s in store.shards)
    result = {"n": n, "dim": d, "shards": len(store.shards), "store_bytes": store_bytes,
              "machine": os.uname().nodename, "cpus": os.cpu_count(), "runs": []}
    for c in cells:
        for way in ("store", "regroup"):
            child = subprocess.Popen([sys.executable, __file__, "--phase", store.uri, str(c), way],
                                     stdout=subprocess.PIPE, text=True)
            out = child.stdout.read()
            assert child.wait() == 0, f"phase {way} with {c} cells failed"
            run = {"cells": c, "way": way, **json.loads(out.strip().splitlines()[-1])}
            print(json.dumps(run), flush=True)
            result["runs"].append(run)
        old, new = result["runs"][-2:]
        assert old["checksum"] == new["checksum"], "both ways must give every cell the same rows"
        result["runs"][-1]["speedup"] = round(old["seconds"] / new["seconds"], 2)
    if output:
        with open(output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1] == "--phase":
        print(json.dumps(phase(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
    else:
        main(int(sys.argv[1]), int(sys.argv[2]), [int(c) for c in sys.argv[3].split(",")],
             sys.argv[4] if len(sys.argv) > 4 else None)
