"""Distributed k-means: Lloyd iterations and k-means++ / k-means|| seeding on the sharded pool.

Each worker assigns its rows to the nearest centroid (:class:`~.search.FlatIndex`: candidates in
the pool's precision, near ties scored exactly) and sums them per cluster; the per-cluster sums,
counts and the inertia are all-reduced (float64), and every rank computes the same new centroids.
Empty clusters are re-seeded by splitting a large one, as faiss does (``Clustering.cpp``,
``split_clusters``), so results track ``faiss.Kmeans`` from the same initial centroids.

Seeding (:data:`SEEDINGS`, by name): ``kmeans++`` (Arthur & Vassilvitskii, SODA 2007) draws each
seed with probability proportional to D(x)^2, one pass over the pool per seed; ``kmeans||``
(Bahmani et al., "Scalable K-Means++", VLDB 2012) oversamples ~2k candidates per round for a few
rounds and reclusters them with weighted k-means++, a bounded number of passes whatever k is
(as cuML and NeMo Curator seed); ``random`` takes uniform rows. All draw from a generator seeded
identically on every rank, over global rows, so every worker count picks the same seeds. Used by
the ``kmeans`` selector (k = budget, default seeding :data:`DEFAULT_SEEDING`), ActiveFT's
initialisation, ActiveDC calibration (k = number of classes), the report and the loop's BADGE.
"""

from __future__ import annotations

import logging

import torch

from .pool import Collectives, Pool, all_sum, gauge, generator, log_every, row_uniforms, sample_rows
from .search import FlatIndex, exact_scores, stream_rows

log = logging.getLogger(__name__)


def kmeans_plusplus(pool: Pool, comm: Collectives, k: int, g: torch.Generator, exclude=()) -> torch.Tensor:
    """``k`` seed rows by D^2 sampling (the first uniformly); excluded rows are never seeds."""
    exclude = torch.as_tensor(list(exclude), dtype=torch.long)
    rows = [int(sample_rows(pool.size, 1, g, exclude)[0])]
    d2 = torch.full((len(pool.x),), torch.inf, dtype=torch.float64, device=pool.device)
    _, local_excluded = pool.local(exclude)
    while True:
        c = pool.gather_rows(torch.tensor(rows[-1:]), comm)
        d2 = torch.minimum(d2, exact_scores(pool.x, c, None, "l2").double())
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


def kmeans_parallel(pool: Pool, comm: Collectives, k: int, g: torch.Generator, exclude=(), *, rounds: int = 5,
                    oversampling: float = 2.0) -> torch.Tensor:
    """``k`` seed rows by k-means|| (Bahmani et al., VLDB 2012, Algorithm 2); excluded rows are never seeds.

    One uniform row, then ``rounds`` rounds that keep each row independently with probability
    ``min(1, l D(x)^2 / phi)`` (l = ``oversampling * k``; phi = sum of D^2; per-row draws from
    :func:`~.pool.row_uniforms`), then each candidate weighted by the pool rows nearest to it and
    k of them chosen by weighted k-means++ (step 8; every rank alike, on the gathered candidates).
    ``rounds + 1`` passes over the pool whatever k is (5 rounds as in the paper's experiments;
    l = 2k is cuML's default oversampling); about ``rounds * l`` candidates are held on every rank.
    Too few distinct candidates (duplicate rows) are topped up with uniform rows.
    """
    exclude = torch.as_tensor(exclude, dtype=torch.long).cpu()
    _, local_excluded = pool.local(exclude)
    chosen = sample_rows(pool.size, 1, g, exclude)
    d2 = exact_scores(pool.x, pool.gather_rows(chosen, comm), None, "l2").double()
    d2[local_excluded] = 0
    for r in range(rounds):
        phi = all_sum(float(d2.sum()), comm, pool.device)
        if phi <= 0:
            break
        keep = (row_uniforms(pool, g) * phi < oversampling * k * d2).nonzero().squeeze(1) + pool.offset
        new = torch.cat([torch.as_tensor(p, dtype=torch.long) for p in comm.all_gather_object(keep.cpu())])
        chosen = torch.cat([chosen, new])
        if len(new) and r + 1 < rounds:
            d2 = torch.minimum(d2, FlatIndex(pool.gather_rows(new, comm), "l2", precision=pool.precision)
                               .search(pool.x)[1].double())
    cand = pool.gather_rows(chosen, comm)
    nearest = FlatIndex(cand, "l2", precision=pool.precision).search(pool.x, scores=False)[0]
    counted = torch.ones(len(pool.x), dtype=torch.bool, device=pool.device)
    counted[local_excluded] = False
    weight = comm.all_reduce(torch.bincount(nearest[counted], minlength=len(cand)).double())
    picks = _weighted_plusplus(cand, weight, k, g) if len(cand) > k else torch.arange(len(cand))
    rows = chosen[picks]
    if len(rows) < k:
        rows = torch.cat([rows, sample_rows(pool.size, k - len(rows), g, torch.cat([exclude, rows]))])
    return rows


def _weighted_plusplus(x: torch.Tensor, weight: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Up to ``k`` distinct rows of ``x`` by k-means++ with each row weighted by ``weight`` (the first
    in proportion to the weight). Draws come from ``g`` up front, so the loop never waits for the
    device; picks after the weight runs out (duplicates) are dropped. Squared distances by one
    matrix-vector product each (every rank computes the same, on the same candidates)."""
    u = torch.rand(k, generator=g, dtype=torch.float64).to(x.device)
    picks = torch.empty(k, dtype=torch.long, device=x.device)
    d2 = torch.full((len(x),), torch.inf, dtype=torch.float64, device=x.device)
    sq = (x.double() ** 2).sum(1)
    p = weight.double()
    for t in range(k):
        cum = torch.cumsum(p, 0)
        i = torch.searchsorted(cum, u[t:t + 1] * cum[-1:], right=True)
        picks[t:t + 1] = torch.minimum(i, (cum < cum[-1]).sum().reshape(1))  # the last row with weight
        xi = x.index_select(0, picks[t:t + 1])
        d2 = torch.minimum(d2, (sq + sq[picks[t:t + 1]] - 2 * (x @ xi[0]).double()).clamp_(min=0))
        d2.index_fill_(0, picks[t:t + 1], 0)
        p = weight * d2
    picks = picks.cpu()
    unique, inverse = torch.unique(picks, return_inverse=True)
    first = torch.full((len(unique),), k).scatter_reduce(0, inverse, torch.arange(k), "amin")
    return picks[first.sort().values]


def random_rows(pool: Pool, comm: Collectives, k: int, g: torch.Generator, exclude=()) -> torch.Tensor:
    """``k`` uniform rows (no pass over the pool)."""
    return sample_rows(pool.size, k, g, torch.as_tensor(exclude, dtype=torch.long).cpu())


SEEDINGS = {"kmeans++": kmeans_plusplus, "kmeans||": kmeans_parallel, "random": random_rows}
DEFAULT_SEEDING = "kmeans||"  # the kmeans selector's default: bounded passes whatever the budget


def seed_rows(pool: Pool, comm: Collectives, k: int, g: torch.Generator, exclude=(), init: str = DEFAULT_SEEDING):
    """``k`` initial rows by the seeding named ``init`` (one of :data:`SEEDINGS`)."""
    if init not in SEEDINGS:
        raise ValueError(f"unknown seeding {init!r}; available: {', '.join(SEEDINGS)}")
    return SEEDINGS[init](pool, comm, k, g, exclude)


def _split_empty(centroids: torch.Tensor, counts: torch.Tensor, n: int, g: torch.Generator) -> int:
    """Re-seed empty clusters from a large one with a small symmetric perturbation (faiss's rule).
    ``counts`` (CPU) is updated in place; the device is touched only for empty clusters."""
    eps, k = 1 / 1024, len(centroids)
    empty = (counts == 0).nonzero().flatten().tolist()
    sign = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1
    for ci in empty:
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
    return len(empty)


def _square_sum(x: torch.Tensor) -> float:
    """sum |x_i|^2 in float64, in chunks."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    step = stream_rows(x.shape[1], x.device)
    for lo in range(0, len(x), step):
        total += torch.linalg.vector_norm(x[lo:lo + step], dtype=torch.float64).square()
    return float(total)


def lloyd(pool: Pool, comm: Collectives, centroids: torch.Tensor, iterations: int, tol: float,
          g: torch.Generator, checkpoints=None, start: int = 0, history=None, tag: str = "kmeans"):
    """Lloyd iterations from ``centroids``; returns ``(centroids, inertia_history)``.

    Inertia at iteration t is the sum of squared distances to the centroids of iteration t
    (as faiss reports it). Stops early when it improves by less than ``tol`` (relative). An
    iteration is one search (:class:`~.search.FlatIndex`) and one chunked pass that adds each row
    (upcast to float64) to its cluster's sum; the host waits for the device once per iteration.
    """
    history = list(history or [])
    every = log_every(iterations)
    sq_norms = all_sum(_square_sum(pool.x), comm, pool.device)
    k, dim = centroids.shape
    step = stream_rows(dim, pool.device)
    for it in range(start, iterations):
        if len(history) > 1 and history[-2] - history[-1] <= tol * history[-2]:
            break  # converged (also when resuming from the checkpoint of the converged iteration)
        idx = FlatIndex(centroids, "l2", precision=pool.precision).search(pool.x, scores=False)[0]
        packed = torch.zeros(k * dim + k, dtype=torch.float64, device=pool.device)
        for lo in range(0, len(pool.x), step):
            packed[:k * dim].view(k, dim).index_add_(0, idx[lo:lo + step], pool.x[lo:lo + step].double())
        packed[k * dim:] = torch.bincount(idx, minlength=k).double()
        comm.all_reduce(packed)
        sums, counts = packed[:k * dim].view(k, dim), packed[k * dim:]
        # sum_i |x_i - c_a(i)|^2 = sum |x|^2 - 2 sum_k c_k . S_k + sum_k n_k |c_k|^2, exactly from the sums
        c64 = centroids.double()
        host = torch.cat([torch.stack([(c64 * sums).sum(), (counts * (c64 * c64).sum(1)).sum()]), counts]).cpu()
        inertia = sq_norms - 2 * float(host[0]) + float(host[1])
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c64)
        empty = _split_empty(centroids, host[2:], pool.size, g)
        centroids = centroids.float()
        history.append(inertia)
        gauge("activeft_kmeans_inertia", inertia, tag)
        if comm.rank == 0 and (it % every == 0 or it == iterations - 1):
            log.info("%s: iteration %d/%d inertia %.6g%s", tag, it + 1, iterations, inertia,
                     f" ({empty} empty clusters re-seeded)" if empty else "")
        if checkpoints and checkpoints.due(it + 1):
            checkpoints.save({"centroids": centroids, "iteration": it + 1, "history": torch.tensor(history),
                              "generator": g.get_state()}, {"iteration": it + 1, "inertia": inertia})
    return centroids, history


def kmeans(pool: Pool, comm: Collectives, k: int, *, iterations: int = 100, tol: float = 1e-4,
           init: str = "kmeans++", seed: int = 0, exclude=(), checkpoints=None, tag: str = "kmeans"):
    """k-means of the whole (sharded) pool: ``(centroids (k, D), inertia_history)``, same on every rank.
    ``init`` names the seeding (:data:`SEEDINGS`)."""
    g = generator(seed)
    state = checkpoints.load() if checkpoints else None
    if state is not None:
        g.set_state(state["generator"])
        return lloyd(pool, comm, state["centroids"].to(pool.device), iterations, tol, g, checkpoints,
                     start=state["iteration"], history=state["history"].tolist(), tag=tag)
    seeds = seed_rows(pool, comm, k, g, exclude, init)
    return lloyd(pool, comm, pool.gather_rows(seeds, comm), iterations, tol, g, checkpoints, tag=tag)
