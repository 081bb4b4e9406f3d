"""Neighbour graphs of the sharded pool and the greedy coverage that runs on them.

:func:`neighbours`: each local row's ``m`` nearest rows (squared Euclidean distance, exact scores
and ties to the smaller row, :meth:`~.search.FlatIndex.knn`) among the rows of the cells its cell
probes. Those rows are gathered to every rank in blocks and searched by each rank's queries, so
memory is one block plus O(local rows x m), never an N x N matrix, and the graph is the same for
any number of workers. :func:`knn_graph` searches the whole pool (one cell) up to ``candidates``
rows, and beyond that an inverted file, as faiss's IVF: k-means cells of ~:data:`CELL` rows, the
rows of each cell searching the ``candidates / CELL`` cells nearest its centroid. Cost per worker:
O(N x min(N, candidates) x D / W) products, O(N x m) exact re-scores, O(N x D x candidates / CELL)
received, O(N / W x m) memory.

:func:`greedy_cover`: pick ``budget`` rows, each maximising its gain
``sum_j max(0, w_ij - cover_j)`` over its out-edges ``i -> j`` (weights ``w`` in [0, 1]), then raise
``cover_j`` to ``w_ij``; ties to the smaller row. ProbCover (0/1 ball weights: the gain is the
out-degree into uncovered rows) and MaxHerding (kernel weights) both run on it. After the first
pass only the rows with an edge into a row whose cover rose are re-scored: O(N m) to start,
O(m^2) per pick (m = edges per row).
"""

from __future__ import annotations

import logging
import math

import torch

from .kcenter import k_center_greedy
from .pool import Collectives, Pool, log_every, merge_topk
from .search import FlatIndex, _fixed_sum

log = logging.getLogger(__name__)

CELL = 4096  # rows per inverted-file cell
BLOCK = 1 << 16  # rows of a cell gathered to every rank at a time
EXACT_UP_TO = 1 << 16  # knn_graph's default ``candidates``: pools up to this size are searched exactly
EDGES = 1 << 27  # default edge budget of a coverage graph (rows x neighbours), about 2 GB


def neighbours(pool: Pool, comm: Collectives, m: int, cells: torch.Tensor | None = None,
               probe: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, d2)``: each local row's ``m`` nearest other rows, ``(len(pool.x), m)`` global rows
    (-1 past the end of a short cell) and squared distances (inf there), nearest first.

    ``cells`` gives each local row's cell (None: one cell, the whole pool); ``probe`` (cells x p,
    replicated) the cells that the rows of each cell search (None: their own).
    """
    n_local, dev = len(pool.x), pool.device
    own = torch.zeros(n_local, dtype=torch.long, device=dev) if cells is None else cells.to(dev).long()
    every_cell = pool.whole(own, comm).cpu()
    counts = torch.bincount(every_cell)
    members = torch.split(torch.sort(every_cell, stable=True).indices, counts.tolist())  # global rows by cell
    probe = torch.arange(len(counts))[:, None] if probe is None else probe.cpu()
    local = torch.split(torch.sort(own.cpu(), stable=True).indices, torch.bincount(own.cpu(), minlength=len(counts))
                        .tolist())
    best_d = torch.full((n_local, m), torch.inf, dtype=torch.float64)
    best_r = torch.full((n_local, m), -1, dtype=torch.long)
    for c in range(len(counts)):
        q = local[c].to(dev)
        search = torch.sort(torch.cat([members[j] for j in probe[c].tolist()])).values.to(dev)
        for lo in range(0, len(search), BLOCK):  # a collective: every rank takes part, with or without queries
            block = search[lo:lo + BLOCK]
            vectors = pool.gather_rows(block, comm)
            if not len(q):
                continue
            idx, d2 = FlatIndex(vectors, "l2", precision=pool.precision).knn(pool.x[q], m + 1)
            rows = block[idx]
            d2 = d2.double().masked_fill(rows == (q + pool.offset)[:, None], torch.inf).cpu()  # not itself
            if len(search) <= BLOCK:  # one block: no merge
                order = torch.sort(d2, dim=1, stable=True).indices[:, :m]  # itself to the end
                d2, rows = d2.gather(1, order), rows.cpu().gather(1, order)
            else:
                d2, rows = merge_topk(torch.cat([-best_d[q.cpu()], -d2], 1),
                                      torch.cat([best_r[q.cpu()], rows.cpu()], 1), Collectives(), m)
                d2 = -d2
            best_d[q.cpu(), :d2.shape[1]], best_r[q.cpu(), :d2.shape[1]] = d2, torch.where(torch.isinf(d2), -1, rows)
    return best_r.to(dev), best_d.float().to(dev)


def knn_graph(pool: Pool, comm: Collectives, m: int, candidates: int = EXACT_UP_TO, seed: int = 0):
    """:func:`neighbours` of the whole pool: exact when ``pool.size <= candidates``, otherwise an
    inverted file: ``ceil(N / CELL)`` k-means cells (the engine's k-means, 10 Lloyd iterations), the
    rows of each cell searching the ``ceil(candidates / CELL)`` cells nearest its centroid, its own
    first (as faiss's IVF with ``nprobe``, probed per cell, so each row is searched and re-scored once)."""
    if pool.size <= candidates:
        return neighbours(pool, comm, m)
    from .kmeans import kmeans

    n_cells = math.ceil(pool.size / CELL)
    centroids, _ = kmeans(pool, comm, n_cells, iterations=10, init="kmeans||", seed=seed, tag="knn cells")
    index = FlatIndex(centroids, "l2", precision=pool.precision)
    cells = index.search(pool.x, scores=False)[0]
    probe, _ = index.knn(centroids, math.ceil(candidates / CELL))
    if comm.rank == 0:
        log.info("knn graph: %d rows in %d cells, each searching %d", pool.size, n_cells, probe.shape[1])
    return neighbours(pool, comm, m, cells, probe)


def coverage_graph(pool: Pool, comm: Collectives, budget: int, m: int | None = None,
                   candidates: int = EXACT_UP_TO, seed: int = 0, reach: int = 2):
    """The graph a coverage selector of ``budget`` rows runs on: ``(rows, d2, radius)``.

    ``m`` (None: ``reach ceil(N / budget)``, at least 32, within :data:`EDGES`) neighbours per row
    (:func:`knn_graph`), and the *budget radius*: the median over rows of the distance to the
    ``ceil(N / budget)``-th nearest row, the radius at which ``budget`` balls around typical rows
    hold as many rows as the pool.
    """
    per_pick = math.ceil(pool.size / budget)
    m = min(m or max(reach * per_pick, 32), max(16, EDGES // pool.size) if m is None else m, pool.size - 1)
    rows, d2 = knn_graph(pool, comm, m, candidates, seed)
    radius = float(pool.whole(d2[:, min(per_pick, m) - 1].double(), comm).median().sqrt())
    return rows, d2, radius


def greedy_cover(pool: Pool, comm: Collectives, targets: torch.Tensor, weights: torch.Tensor, budget: int,
                 g: torch.Generator, exclude=(), tag: str = "cover") -> tuple[torch.Tensor, torch.Tensor]:
    """``budget`` global rows by greedy coverage (module docstring) and the gain of each pick.

    ``targets`` (local rows x e, global rows, -1 for none) and ``weights`` (same shape, in [0, 1])
    are each local row's out-edges to other rows; its edge to itself (weight 1) is added. Excluded
    rows are never picked and cover their targets from the start. The cover is held on every rank
    (O(N)). Once no row gains anything (the graph is covered), the rest are picked farthest-first
    from all picks (:func:`~.kcenter.k_center_greedy`, drawing from ``g``), with gain 0, and a
    warning says so.
    """
    dev = pool.device
    itself = torch.arange(len(targets), device=dev)[:, None] + pool.offset
    w = torch.cat([torch.ones_like(itself, dtype=torch.float64), torch.where(targets >= 0, weights.double(), 0.0)], 1)
    t = torch.cat([itself, targets.clamp(min=0)], 1)
    cover = torch.zeros(pool.size, dtype=torch.float64, device=dev)
    free = torch.ones(len(t), dtype=torch.bool, device=dev)
    # reverse edges: for each target row, the local rows pointing at it
    flat = t.flatten()
    by_target = torch.sort(flat, stable=True).indices
    starts = torch.searchsorted(flat[by_target], torch.arange(pool.size + 1, device=dev))

    def pick_edges(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The out-edges of global ``rows``, from their ranks, on every rank."""
        packed = torch.zeros(len(rows), 2, t.shape[1], dtype=torch.float64, device=dev)
        mask, local = pool.local(torch.tensor(rows, dtype=torch.long))
        packed[mask, 0], packed[mask, 1] = t[local].double(), w[local]
        packed = comm.all_reduce(packed)
        return packed[:, 0].long().flatten(), packed[:, 1].flatten()

    def raise_cover(to: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Raise ``cover[to]`` to ``value``; the local rows whose gain changed."""
        rose = value > cover[to]
        to, value = to[rose], value[rose]
        cover.scatter_reduce_(0, to, value, "amax")
        to = torch.unique(to)
        lo, hi = starts[to], starts[to + 1]
        if not len(to) or int((hi - lo).sum()) == 0:
            return torch.empty(0, dtype=torch.long, device=dev)
        spans = torch.repeat_interleave(lo - torch.cumsum(hi - lo, 0) + (hi - lo), hi - lo)
        return torch.unique(by_target[spans + torch.arange(int((hi - lo).sum()), device=dev)] // t.shape[1])

    def gains(rows: torch.Tensor) -> torch.Tensor:
        return _fixed_sum((w[rows] - cover[t[rows]]).clamp_(min=0))

    exclude = torch.as_tensor(list(exclude), dtype=torch.long)
    if len(exclude):
        to, value = pick_edges(exclude.tolist())
        raise_cover(to, value)
        _, local = pool.local(exclude)
        free[local] = False
    gain = torch.where(free, gains(torch.arange(len(t), device=dev)), -torch.inf)
    chosen, got, every = [], [], log_every(budget)
    for _ in range(budget):
        i = int(torch.argmax(gain))  # the first of equal gains: the smaller row
        v, r = merge_topk(gain[i].reshape(1, 1), torch.tensor([[pool.offset + i]]), comm, 1)
        if float(v[0, 0]) <= 0:
            if comm.rank == 0:
                log.warning("%s: the graph is covered after %d of %d picks; the other %d are picked "
                            "farthest-first", tag, len(chosen), budget, budget - len(chosen))
            taken = [*exclude.tolist(), *chosen]
            rest = k_center_greedy(pool, comm, budget - len(chosen), g, taken, tag=f"{tag} (farthest-first)")
            return torch.tensor(chosen + rest.tolist()), torch.tensor(got + [0.0] * len(rest), dtype=torch.float64)
        row = int(r[0, 0])
        chosen.append(row)
        got.append(float(v[0, 0]))
        changed = raise_cover(*pick_edges([row]))
        gain[changed] = torch.where(free[changed], gains(changed), -torch.inf)
        mask, local = pool.local(torch.tensor([row]))
        free[local], gain[local] = False, -torch.inf
        if comm.rank == 0 and len(chosen) % every == 0:
            log.info("%s: %d/%d picked, gain %.4g, coverage %.4f", tag, len(chosen), budget, got[-1],
                     float(cover.mean()))
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(got, dtype=torch.float64)
