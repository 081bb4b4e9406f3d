"""Centroids -> distinct pool samples: the greedy, centroid-ordered mapping of ActiveFT.

The official code (``ActiveFT_CIFAR.py``, ``optimize_dist``) sorts each centroid's cosine
similarity to all N samples and, in centroid index order, gives each centroid its most
similar sample not taken yet, so earlier centroids win conflicts and exactly K distinct
samples come out. Here each worker proposes its top-T candidates per centroid, the candidates
are merged (ties to the smaller row), and centroids are resolved in order until one has no
free candidate left; the rest go to another round with taken rows masked out and a larger T.
Only candidates scoring above every worker's T-th candidate are known to be in global order,
so only those are used; candidate scores are recomputed row by row (BLAS results move in the
last bit with blocking). That reproduces the sequential greedy exactly, for any number of
workers, with memory O(K x T) instead of a K x N sort.
"""

from __future__ import annotations

import torch

from ._engine import Collectives, Pool, chunk_rows


def _local_topk(pool: Pool, c: torch.Tensor, t: int, taken: torch.Tensor):
    """Top-``t`` (similarity, global row) per centroid among this worker's free rows."""
    best_v = torch.full((len(c), 0), -torch.inf, device=pool.device)
    best_r = torch.empty((len(c), 0), dtype=torch.long, device=pool.device)
    step = chunk_rows(len(c))
    with torch.no_grad():
        for lo in range(0, len(pool.x), step):
            s = c @ pool.x[lo:lo + step].T
            s[:, taken[lo:lo + step]] = -torch.inf
            v, i = s.topk(min(t, s.shape[1]), dim=1)
            v, j = torch.cat([best_v, v], 1).topk(min(t, best_v.shape[1] + v.shape[1]), dim=1)
            best_r = torch.cat([best_r, i + pool.offset + lo], 1).gather(1, j)
            best_v = v
    # re-score the candidates row by row: matmul values move in the last bit with blocking, and
    # the greedy order must not (1 and W workers must map identically)
    local = (best_r - pool.offset).clamp(min=0)
    step = max(1, chunk_rows(t * c.shape[1]))
    for lo in range(0, len(c), step):
        exact = (pool.x[local[lo:lo + step]] * c[lo:lo + step, None, :]).sum(-1)
        best_v[lo:lo + step] = torch.where(torch.isinf(best_v[lo:lo + step]), best_v[lo:lo + step], exact)
    pad = t - best_v.shape[1]
    if pad > 0:
        best_v = torch.cat([best_v, torch.full((len(c), pad), -torch.inf, device=pool.device)], 1)
        best_r = torch.cat([best_r, torch.full((len(c), pad), -1, dtype=torch.long, device=pool.device)], 1)
    return best_v, best_r


def greedy_unique(pool: Pool, comm: Collectives, centroids: torch.Tensor, taken=(), candidates: int = 16):
    """Map each centroid (in index order) to its most similar pool row not taken yet.

    Parameters
    ----------
    centroids : (K, D) tensor, replicated on every rank; similarity is the inner product
        (cosine for unit vectors).
    taken : global rows that may not be chosen (e.g. already labeled).

    Returns
    -------
    rows, similarity : CPU tensors of length K; ``rows`` are distinct global rows.
    """
    k = len(centroids)
    taken_set = {int(r) for r in taken}
    local_taken = torch.zeros(len(pool.x), dtype=torch.bool, device=pool.device)
    _, idx = pool.local(torch.tensor(sorted(taken_set), dtype=torch.long))
    local_taken[idx] = True
    rows = torch.full((k,), -1, dtype=torch.long)
    sims = torch.zeros(k)
    first, t = 0, candidates
    while first < k:
        v, r = _local_topk(pool, centroids[first:], t, local_taken)
        v, r = comm.all_gather(v), comm.all_gather(r)
        # the merged lists are the true global order only above the highest of the workers' t-th
        # scores (a worker's unseen rows rank below its own t-th); beyond it a centroid must wait
        frontier = v[:, :, -1].max(0).values.cpu()
        v, r = v.permute(1, 0, 2).flatten(1), r.permute(1, 0, 2).flatten(1)
        order = torch.sort(r, dim=1, stable=True).indices  # ties in similarity -> smaller row first
        v, r = v.gather(1, order), r.gather(1, order)
        order = torch.sort(-v, dim=1, stable=True).indices
        v, r = v.gather(1, order).cpu(), r.gather(1, order).cpu()
        for j in range(k - first):
            pick = next((i for i in range(r.shape[1]) if v[j, i] > frontier[j] or frontier[j] == -torch.inf
                         if r[j, i] >= 0 and int(r[j, i]) not in taken_set), None)
            if pick is None:
                break  # every candidate of this centroid is taken: later centroids must wait for it
            row = int(r[j, pick])
            rows[first + j], sims[first + j] = row, v[j, pick]
            taken_set.add(row)
            if pool.offset <= row < pool.offset + len(pool.x):
                local_taken[row - pool.offset] = True
        else:
            j = k - first
        first += j
        t *= 2
    return rows, sims
