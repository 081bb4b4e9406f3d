"""Independent tasks: in this process with one worker, else as Ray tasks; and the pass over a store's
shards that gathers the vectors of some rows.

Where :mod:`.runner` runs one job over the whole pool with collectives, these are many small jobs that
never talk to each other (a cell, a shard), as Ray Data or faiss's sharded index would farm them out.
"""

from __future__ import annotations

import numpy as np

from ..io.store import EmbeddingStore

SHARE_BYTES = 1 << 20  # an array argument this large is put in the object store once, not once a task


def tasks(fn, args: dict, num_workers: int, use_gpu: bool):
    """``(key, fn(*a))`` for each ``key: a`` of ``args``, in completion order: in this process with one
    worker, else as Ray tasks (one CPU, or one GPU, each; 3 retries; spread over the nodes), at most
    ``num_workers`` running.
    A large numpy array passed to many tasks (the same object) goes to Ray's object store once."""
    if num_workers == 1:
        for c, a in args.items():
            yield c, fn(*a)
        return
    import ray

    from . import cluster

    cluster.init()
    task = ray.remote(num_cpus=0 if use_gpu else 1, num_gpus=1 if use_gpu else 0, max_retries=3,
                      scheduling_strategy="SPREAD")(fn)  # over the nodes: their disks and links, not one's
    shared = {}

    def put(v):
        if isinstance(v, np.ndarray) and v.nbytes >= SHARE_BYTES:
            return shared.setdefault(id(v), (v, ray.put(v)))[1]
        return v

    pending, running = list(args.items()), {}
    while pending or running:
        while pending and len(running) < num_workers:
            c, a = pending.pop(0)
            running[task.remote(*map(put, a))] = c
        ready, _ = ray.wait(list(running), num_returns=1)
        yield running.pop(ready[0]), ray.get(ready[0])


def within(rows: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The sorted ``rows`` in ``[lo, hi)``."""
    return rows[np.searchsorted(rows, lo):np.searchsorted(rows, hi)]


def by_shard(store: EmbeddingStore, *rows: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Each shard holding any of the sorted global ``rows`` arrays: ``{shard: [its part of each array]}``."""
    parts = {i: [within(r, lo, hi) for r in rows] for i, (lo, hi) in enumerate(store.shard_bounds)}
    return {i: p for i, p in parts.items() if any(len(r) for r in p)}


def _vectors(store_uri: str, rows: np.ndarray) -> np.ndarray:
    return EmbeddingStore(store_uri).embeddings_at(rows)


def gather(store: EmbeddingStore, rows: np.ndarray, num_workers: int = 1) -> np.ndarray:
    """float32 ``(len(rows), dim)`` vectors of the sorted global ``rows``, a task a shard (each reads its
    shard's embeddings once and keeps only those rows): memory O(one shard + rows), never the pool."""
    args = {i: (store.uri, r) for i, (r,) in by_shard(store, rows).items()}
    parts = dict(tasks(_vectors, args, num_workers, use_gpu=False))
    return np.concatenate([parts[i] for i in sorted(parts)]) if parts else np.zeros((0, store.dim), np.float32)
