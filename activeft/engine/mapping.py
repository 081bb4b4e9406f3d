"""Centroids -> distinct pool samples: the greedy, centroid-ordered mapping of ActiveFT.

The official code (``ActiveFT_CIFAR.py``, ``optimize_dist``) sorts each centroid's cosine
similarity to all N samples and, in centroid index order, gives each centroid its most
similar sample not taken yet, so earlier centroids win conflicts and exactly K distinct
samples come out. Here each worker proposes its top-T candidates per centroid (products in the
pool's precision), the candidates are merged (:func:`merge_topk`: ties to the smaller row), and
centroids are resolved in order; one whose candidates are all taken gets a deeper search of its
own, with taken rows masked out. Candidates are re-scored exactly (:func:`~.search.exact_scores`),
and only those scoring above every worker's frontier (its T-th approximate score plus the error
bound of that precision, see :mod:`~.search`) are known to be in global order, so only those are
used. That reproduces the sequential greedy on exact scores, for any number of workers and any
precision, with memory O(K x T) instead of a K x N sort.
"""

from __future__ import annotations

import torch

from .pool import Collectives, Pool, merge_topk
from .search import band_factors, chunk_rows, exact_scores, products, resolve_precision, row_norms, topk


def _local_topk(pool: Pool, c: torch.Tensor, t: int, taken: torch.Tensor):
    """Per centroid, among this worker's free rows: the top-``t`` global rows by approximate
    similarity, their exact similarities (-inf: none), and the frontier (module docstring)."""
    precision = resolve_precision(pool.precision, pool.device)
    approx = torch.full((len(c), 0), -torch.inf, device=pool.device)
    best_r = torch.empty((len(c), 0), dtype=torch.long, device=pool.device)
    step = chunk_rows(len(c), 4, pool.device)
    with torch.no_grad():
        for lo in range(0, len(pool.x), step):
            s = products(c, pool.x[lo:lo + step], precision).masked_fill_(taken[None, lo:lo + step], -torch.inf)
            v, i = topk(s, min(t, s.shape[1]))
            approx, j = torch.cat([approx, v.float()], 1).topk(min(t, approx.shape[1] + v.shape[1]), dim=1)
            best_r = torch.cat([best_r, i + pool.offset + lo], 1).gather(1, j)
        a, b = band_factors(precision, "ip", c.shape[1])
        x_max = row_norms(pool.x).max() if len(pool.x) else 0.0
        frontier = approx[:, -1] + (a + b) * x_max * row_norms(c)
        if approx.shape[1] < t:  # this worker lists all its free rows
            frontier = torch.full_like(frontier, -torch.inf)
        # exact scores: BLAS results move in the last bit with blocking, and the greedy order must
        # not (1 and W workers, any precision, must map identically)
        local = (best_r - pool.offset).clamp(min=0)
        exact = exact_scores(pool.x, c, torch.arange(len(c), device=pool.device).repeat_interleave(local.shape[1]),
                             "ip", rows=local.flatten()).view(local.shape)
        best_v = torch.where(torch.isinf(approx), approx, exact)
    pad = t - best_v.shape[1]
    if pad > 0:
        best_v = torch.cat([best_v, torch.full((len(c), pad), -torch.inf, device=pool.device)], 1)
        best_r = torch.cat([best_r, torch.full((len(c), pad), -1, dtype=torch.long, device=pool.device)], 1)
    return best_v, best_r, frontier


def _candidates(pool: Pool, comm: Collectives, c: torch.Tensor, t: int, taken: torch.Tensor):
    """Merged candidate lists of all workers, sorted by exact score then row, and each list's
    frontier: the highest of the workers' frontiers. Only candidates above it are known to be in
    global order (a worker's unlisted rows score at most its frontier); -inf when every free row
    is listed."""
    v, r, frontier = _local_topk(pool, c, t, taken)
    frontier = comm.all_gather(frontier).max(0).values.cpu()
    v, r = merge_topk(v, r, comm)
    return v, r, frontier


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

    One batched search gives every centroid its top candidates; a centroid whose usable
    candidates are all taken by earlier centroids gets a deeper search of its own (taken rows
    masked, the list doubled until it resolves). Every rank runs the same resolution, so all of
    them call the deeper searches together.
    """
    k = len(centroids)
    taken_set = {int(r) for r in taken}
    local_taken = torch.zeros(len(pool.x), dtype=torch.bool, device=pool.device)
    _, idx = pool.local(torch.tensor(sorted(taken_set), dtype=torch.long))
    local_taken[idx] = True
    rows = torch.full((k,), -1, dtype=torch.long)
    sims = torch.zeros(k)
    v, r, frontier = (a.tolist() for a in _candidates(pool, comm, centroids, candidates, local_taken))
    for j in range(k):
        vj, rj, fj, t = v[j], r[j], frontier[j], candidates
        while True:
            pick = next((i for i, (score, row) in enumerate(zip(vj, rj, strict=True))
                         if row >= 0 and (score > fj or fj == -float("inf")) and row not in taken_set), None)
            if pick is not None:
                break
            t *= 2  # every usable candidate is taken: look deeper, for this centroid alone
            vj, rj, fj = (a.tolist()[0] for a in _candidates(pool, comm, centroids[j:j + 1], t, local_taken))
        row = rj[pick]
        rows[j], sims[j] = row, vj[pick]
        taken_set.add(row)
        if pool.offset <= row < pool.offset + len(pool.x):
            local_taken[row - pool.offset] = True
    return rows, sims
