"""Bookkeeping that turns a stream of embedded rows into one shard per input partition.

An embed run plans its source into partitions (``_work/plan/part-N.parquet``: the input rows,
with ``partition`` and ``row`` columns); plans are written once and never change, so shard
names are deterministic and a rerun with new images only adds partitions.

Ray Data may split and merge blocks, so a partition's rows reach the sink in pieces. Each
write task stages its rows as contiguous runs (``_work/staging/part-N/<first>-<last>.parquet``);
when the runs of a partition cover all its rows, the partition is consolidated: errors go to
``_work/errors/part-N.parquet``, then the shard ``part-N.parquet`` is written (the completion
marker) and the staging directory removed. Consolidation is idempotent, so concurrent or
repeated attempts are harmless.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from ..io import storage
from ..io.store import WORK, shard_name

_RUN = re.compile(r"(\d{9})-(\d{9})\.parquet")


def plan_uri(store: str, p: int) -> str:
    return storage.join(store, WORK, "plan", shard_name(p))


def staging_uri(store: str, p: int) -> str:
    return storage.join(store, WORK, "staging", shard_name(p).removesuffix(".parquet"))


def errors_uri(store: str, p: int) -> str:
    return storage.join(store, WORK, "errors", shard_name(p))


def stage(store: str, table: pa.Table) -> list[int]:
    """Write ``table``'s rows as contiguous runs per partition; return the partitions touched."""
    table = table.sort_by([("partition", "ascending"), ("row", "ascending")])
    parts = table.column("partition").to_numpy()
    rows = table.column("row").to_numpy()
    # a run breaks where the partition changes or the row index is not the next one
    breaks = [0] + [i for i in range(1, len(rows)) if parts[i] != parts[i - 1] or rows[i] != rows[i - 1] + 1]
    for lo, hi in zip(breaks, breaks[1:] + [len(rows)], strict=False):
        p, first, last = int(parts[lo]), int(rows[lo]), int(rows[hi - 1])
        storage.write_parquet(storage.join(staging_uri(store, p), f"{first:09d}-{last:09d}.parquet"),
                              table.slice(lo, hi - lo))
    return sorted(set(parts.tolist()))


def _covered(store: str, p: int, size: int) -> bool:
    runs = sorted((int(m[1]), int(m[2])) for key, _ in storage.list_files(staging_uri(store, p), recursive=False)
                  if (m := _RUN.fullmatch(key)))
    reach = 0
    for first, last in runs:
        if first > reach:
            return False
        reach = max(reach, last + 1)
    return reach >= size


def consolidate(store: str, p: int, size: int, columns: list[str]) -> bool:
    """Write shard ``p`` if its staged runs cover all ``size`` rows. True once the shard exists."""
    shard = storage.join(store, shard_name(p))
    if storage.exists(shard):
        return True
    if not _covered(store, p, size):
        return False
    try:
        table = pa.concat_tables(storage.read_parquet(uri) for key, uri in
                                 storage.list_files(staging_uri(store, p), recursive=False) if _RUN.fullmatch(key))
    except FileNotFoundError:  # a concurrent attempt finished first
        return storage.exists(shard)
    table = _dedupe_rows(table.sort_by("row"))
    failed = pc.not_equal(table.column("error"), "")
    errors = table.filter(failed).select(["id", "uri", "error"])
    if errors.num_rows:
        storage.write_parquet(errors_uri(store, p), errors)
    storage.write_parquet(shard, table.filter(pc.invert(failed)).select(columns))
    storage.delete(staging_uri(store, p))
    return True


def _dedupe_rows(table: pa.Table) -> pa.Table:
    """Keep the first copy of each row index (a retried task may stage a row twice)."""
    rows = table.column("row").to_numpy()
    keep = [0] + [i for i in range(1, len(rows)) if rows[i] != rows[i - 1]] if len(rows) else []
    return table.take(pa.array(keep, pa.int64()))
