"""Coverage: the mean cosine similarity of the pool's rows to their nearest selected row, the number
``selection.json`` reports for a selection and for a random one of the same size.

Of every row, or, in a pool of more than :data:`COVERAGE_ROWS` rows, of a fixed uniform sample of that
many (:func:`measured_rows`; the standard error is the similarities' deviation / 362, about 3e-4). Two
ways to the same number: :func:`coverage` inside a pool job (the pool in memory, sharded over ranks),
and :func:`coverage_by_shard` over the store, a task a shard, for the cells path, which never holds
the pool. Neither moves the selection's vectors: the measured rows go to where the selected rows live.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..engine import generator, nearest, sample_rows
from ..io.store import EmbeddingStore
from ..runtime.tasks import by_shard, gather, tasks

COVERAGE_ROWS = 1 << 17  # coverage of larger pools is measured on a sample of this many rows


def measured_rows(n: int) -> torch.Tensor:
    """The sorted rows coverage is measured on: all ``n``, or a fixed uniform sample of :data:`COVERAGE_ROWS`."""
    if n > COVERAGE_ROWS:
        return sample_rows(n, COVERAGE_ROWS, generator(0)).sort().values
    return torch.arange(n)


def _best(queries: torch.Tensor, keys: torch.Tensor, precision: str | None) -> torch.Tensor:
    """Each query's highest cosine similarity to a row of ``keys`` (-inf without keys)."""
    if not len(keys):
        return torch.full((len(queries),), -torch.inf, device=queries.device)
    return nearest(queries, keys.float(), "ip", precision=precision)[1].float()


def coverage(pool, comm, rows) -> float:
    """The coverage of ``rows`` in a pool job: the measured rows are gathered on every rank, which
    searches the selected rows it holds; the best of every rank is taken. Work: O(measured x rows /
    ranks) a rank."""
    queries = pool.gather_rows(measured_rows(pool.size), comm)
    mine = pool.local(torch.as_tensor(rows, dtype=torch.long))[1]
    best = _best(queries, pool.x[mine], pool.precision)
    return float(comm.all_gather(best).max(0).values.double().mean())


def coverage_job(rows, random_rows, pool, comm, checkpoints) -> dict:
    """The coverage of a selection and of a random one, the rows it was measured on, and its seconds."""
    t0 = time.perf_counter()
    return {"coverage": coverage(pool, comm, rows), "coverage_random": coverage(pool, comm, random_rows),
            "coverage_rows": min(pool.size, COVERAGE_ROWS), "seconds_coverage": round(time.perf_counter() - t0, 3)}


def _shard_best(store_uri: str, queries: np.ndarray, selections: list[np.ndarray], device: str,
                precision: str | None) -> list[np.ndarray]:
    """Each query's best similarity to each selection's rows in one shard (their vectors read once)."""
    x = torch.from_numpy(EmbeddingStore(store_uri).embeddings_at(np.concatenate(selections))).to(device)
    q = torch.from_numpy(queries).to(device)
    bounds = np.cumsum([0] + [len(s) for s in selections])
    return [_best(q, x[a:b], precision).cpu().numpy() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def coverage_by_shard(store: EmbeddingStore, rows, random_rows, *, queries: np.ndarray | None = None,
                      num_workers: int, use_gpu: bool, precision: str | None) -> dict:
    """:func:`coverage_job`'s numbers without the pool in memory: the measured rows' vectors (``queries``,
    else gathered in a pass of their own), then a pass that searches, a task a shard, the selected rows that
    shard holds; the best over shards is kept. Memory: one shard and the measured rows."""
    t0 = time.perf_counter()
    if queries is None:
        queries = gather(store, measured_rows(len(store)).numpy(), num_workers)
    picked = [np.sort(np.asarray(r, np.int64)) for r in (rows, random_rows)]
    args = {i: (store.uri, queries, held, "cuda" if use_gpu else "cpu", precision)
            for i, held in by_shard(store, *picked).items()}
    best = [np.full(len(queries), -np.inf, np.float32) for _ in picked]
    for _, found in tasks(_shard_best, args, num_workers, use_gpu):
        best = [np.maximum(b, f) for b, f in zip(best, found, strict=True)]
    return {"coverage": float(best[0].astype(np.float64).mean()),
            "coverage_random": float(best[1].astype(np.float64).mean()),
            "coverage_rows": len(queries), "seconds_coverage": round(time.perf_counter() - t0, 3)}
