"""Distributed k-means: Lloyd iterations and k-means++ seeding on the sharded pool.

Each worker assigns its rows to the nearest centroid (faiss on CPU, chunked torch on GPU) and
sums them per cluster; the per-cluster sums, counts and the inertia are all-reduced (float64),
and every rank computes the same new centroids. Empty clusters are re-seeded by splitting a
large one, as faiss does (``Clustering.cpp``, ``split_clusters``), so results track
``faiss.Kmeans`` from the same initial centroids. k-means++ (Arthur & Vassilvitskii 2007) draws
each new seed with probability proportional to D(x)^2 using a generator seeded identically on
every rank. Used by the ``kmeans`` selector (k = budget), ActiveFT's k-means++ initialisation,
ActiveDC calibration (k = number of classes), the report and the loop's BADGE strategy.
"""

from __future__ import annotations

import logging

import torch

from .. import metrics
from .pool import Collectives, Pool, all_sum, generator, log_every, sample_rows
from .search import FlatIndex, chunk_rows

log = logging.getLogger(__name__)


def kmeans_plusplus(pool: Pool, comm: Collectives, k: int, g: torch.Generator, exclude=()) -> torch.Tensor:
    """``k`` seed rows by D^2 sampling (the first uniformly); excluded rows are never seeds."""
    exclude = torch.as_tensor(list(exclude), dtype=torch.long)
    rows = [int(sample_rows(pool.size, 1, g, exclude)[0])]
    d2 = torch.full((len(pool.x),), torch.inf, dtype=torch.float64, device=pool.device)
    _, local_excluded = pool.local(exclude)
    while True:
        c = pool.gather_rows(torch.tensor(rows[-1:]), comm)
        d2 = torch.minimum(d2, ((pool.x - c) ** 2).sum(1).double())
        d2[local_excluded] = 0
        if len(rows) == k:
            return torch.tensor(rows, dtype=torch.long)
        sums = comm.all_gather(d2.sum().reshape(1)).flatten().cpu()
        u = torch.rand(1, generator=g, dtype=torch.float64).item() * sums.sum().item()
        if sums.sum() <= 0:  # every row is already a seed (duplicates): fall back to uniform
            rows.append(int(sample_rows(pool.size, 1, g, torch.cat([exclude, torch.tensor(rows)]))[0]))
            continue
        owner = int(torch.searchsorted(torch.cumsum(sums, 0), torch.tensor([u], dtype=torch.float64), right=True))
        if owner >= comm.world_size:  # u rounded up to the total: the last worker with weight
            owner = int(torch.nonzero(sums > 0)[-1])
        pick = torch.zeros(1, dtype=torch.float64, device=pool.device)
        if comm.rank == owner:
            u_local = u - sums[:owner].sum().item()
            i = int(torch.searchsorted(torch.cumsum(d2, 0), torch.tensor([u_local], dtype=torch.float64,
                                                                        device=pool.device), right=True))
            positive = torch.nonzero(d2 > 0).flatten()  # never land on a zero-weight row (rounding at the ends)
            below = positive[positive <= i]
            pick[0] = pool.offset + int(below[-1] if len(below) else positive[0])
        rows.append(int(comm.all_reduce(pick).item()))


def _split_empty(centroids: torch.Tensor, counts: torch.Tensor, n: int, g: torch.Generator) -> int:
    """Re-seed empty clusters from a large one with a small symmetric perturbation (faiss's rule)."""
    eps, k, empty = 1 / 1024, len(centroids), 0
    sign = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1
    for ci in range(k):
        if counts[ci] > 0:
            continue
        empty += 1
        cj = 0
        while True:
            p = (counts[cj] - 1.0) / max(n - k, 1)
            if torch.rand(1, generator=g).item() < p:
                break
            cj = (cj + 1) % k
        centroids[ci] = centroids[cj] * (1 + eps * sign)
        centroids[cj] = centroids[cj] * (1 - eps * sign)
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]
    return empty


def lloyd(pool: Pool, comm: Collectives, centroids: torch.Tensor, iterations: int, tol: float,
          g: torch.Generator, checkpoints=None, start: int = 0, history=None, tag: str = "kmeans"):
    """Lloyd iterations from ``centroids``; returns ``(centroids, inertia_history)``.

    Inertia at iteration t is the sum of squared distances to the centroids of iteration t
    (as faiss reports it). Stops early when it improves by less than ``tol`` (relative).
    """
    history = list(history or [])
    every = log_every(iterations)
    sq_norms = all_sum(float(pool.x.double().pow(2).sum()), comm, pool.device)
    for it in range(start, iterations):
        if len(history) > 1 and history[-2] - history[-1] <= tol * history[-2]:
            break  # converged (also when resuming from the checkpoint of the converged iteration)
        idx = FlatIndex(centroids, "l2").search(pool.x, scores=False)[0]
        k, dim = centroids.shape
        packed = torch.zeros(k * dim + k, dtype=torch.float64, device=pool.device)
        step = chunk_rows(dim, 8)
        for lo in range(0, len(pool.x), step):
            packed[:k * dim].view(k, dim).index_add_(0, idx[lo:lo + step], pool.x[lo:lo + step].double())
        packed[k * dim:] = torch.bincount(idx, minlength=k).double()
        comm.all_reduce(packed)
        sums, counts = packed[:k * dim].view(k, dim), packed[k * dim:]
        # sum_i |x_i - c_a(i)|^2 = sum |x|^2 - 2 sum_k c_k . S_k + sum_k n_k |c_k|^2, exactly from the sums
        c64 = centroids.double()
        inertia = sq_norms - 2 * float((c64 * sums).sum()) + float((counts * (c64 * c64).sum(1)).sum())
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids.double())
        empty = _split_empty(centroids, counts, pool.size, g)
        centroids = centroids.float()
        history.append(inertia)
        metrics.set("activeft_kmeans_inertia", inertia, stage=tag)
        if comm.rank == 0 and (it % every == 0 or it == iterations - 1):
            log.info("%s: iteration %d/%d inertia %.6g%s", tag, it + 1, iterations, inertia,
                     f" ({empty} empty clusters re-seeded)" if empty else "")
        if checkpoints and checkpoints.due(it + 1):
            checkpoints.save({"centroids": centroids, "iteration": it + 1, "history": torch.tensor(history),
                              "generator": g.get_state()}, {"iteration": it + 1, "inertia": inertia})
    return centroids, history


def kmeans(pool: Pool, comm: Collectives, k: int, *, iterations: int = 100, tol: float = 1e-4,
           init: str = "kmeans++", seed: int = 0, exclude=(), checkpoints=None, tag: str = "kmeans"):
    """k-means of the whole (sharded) pool: ``(centroids (k, D), inertia_history)``, same on every rank."""
    g = generator(seed)
    state = checkpoints.load() if checkpoints else None
    if state is not None:
        g.set_state(state["generator"])
        return lloyd(pool, comm, state["centroids"].to(pool.device), iterations, tol, g, checkpoints,
                     start=state["iteration"], history=state["history"].tolist(), tag=tag)
    seeds = kmeans_plusplus(pool, comm, k, g, exclude) if init == "kmeans++" else sample_rows(pool.size, k, g, exclude)
    return lloyd(pool, comm, pool.gather_rows(seeds, comm), iterations, tol, g, checkpoints, tag=tag)
