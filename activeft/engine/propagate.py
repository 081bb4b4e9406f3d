"""Label spreading on the sharded neighbour graph (Zhou, Bousquet, Lal, Weston and Schölkopf, "Learning
with Local and Global Consistency", NIPS 2004), as scikit-learn's ``LabelSpreading(kernel="knn")``.

The affinity is the symmetrised kNN graph ``W = (A + A^T) / 2`` (``A_ij = 1`` when ``j`` is one of
``i``'s ``k`` nearest other rows, :func:`~.graph.knn_graph`), ``S = D^-1/2 W D^-1/2`` with ``D`` its
row sums, and from ``F = Y`` (one-hot rows of the labeled rows, zeros elsewhere)
``F <- alpha S F + (1 - alpha) Y`` until the L1 change of ``F`` is below ``tol`` (scikit-learn's
test) or after ``iterations``. scikit-learn counts each row among its own ``k`` neighbours and
zeroes the diagonal after normalising; here a row's ``k`` neighbours are other rows.

Sharded: every rank holds the graph's ``N x k`` rows (gathered once) and the class scores ``F``
(``N x C``, float64); each computes ``S F`` for its own rows, adding the edges of each row in one
global order (``index_add_`` adds a row's terms in their order), and ``F`` is assembled by an
all-reduce in which each entry has one non-zero term. So every number is the same for any number of
workers. Memory O(N (k + C)) per rank; per iteration O(N k C / W) and one all-reduce of ``N x C``
(measured at 1M x 128, k = 10, 10 classes on 2 cores: ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import logging

import torch

from .graph import knn_graph
from .pool import Collectives, Pool, log_every

log = logging.getLogger(__name__)
EDGES = 1 << 20  # edges added to the class scores at a time


def spread_labels(pool: Pool, comm: Collectives, rows: torch.Tensor, classes: torch.Tensor, n_classes: int, *,
                  k: int = 10, alpha: float = 0.2, iterations: int = 30, tol: float = 1e-3,
                  candidates: int = 1 << 16, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """The class scores ``F`` (``N x n_classes`` float64, on every rank) of label spreading from the
    labeled global ``rows`` (their class indices ``classes``) over the pool's ``k``-nearest-neighbour
    graph, and ``{"iterations": n, "change": [L1 change per iteration]}``."""
    local, _ = knn_graph(pool, comm, k, candidates, seed)
    graph = pool.whole(local, comm).cpu()  # N x k global rows (-1: none), the same on every rank
    n, lo, hi = pool.size, pool.offset, pool.offset + len(pool.x)
    src = torch.arange(n).repeat_interleave(graph.shape[1])
    dst = graph.reshape(-1)
    keep = dst >= 0
    src, dst = src[keep], dst[keep]
    # each directed edge gives half a unit to both of its ends: W = (A + A^T) / 2, in one global order
    to, frm = torch.cat([src, dst]), torch.cat([dst, src])
    mine = (to >= lo) & (to < hi)
    to, frm = to[mine] - lo, frm[mine]
    half = torch.full((len(to),), 0.5, dtype=torch.float64)
    degree = _whole(pool, comm, torch.zeros(hi - lo, dtype=torch.float64).index_add_(0, to, half))
    weight = 0.5 / (degree[to + lo] * degree[frm]).sqrt()
    y = torch.zeros(n, n_classes, dtype=torch.float64)
    y[rows.cpu().long(), classes.cpu().long()] = 1.0
    f, change = y.clone(), []
    every = log_every(iterations)
    for it in range(iterations):
        spread = torch.zeros(hi - lo, n_classes, dtype=torch.float64)
        for e in range(0, len(to), EDGES):  # in blocks of edges, in order: the same sums, bounded memory
            spread.index_add_(0, to[e:e + EDGES], weight[e:e + EDGES, None] * f[frm[e:e + EDGES]])
        new = _whole(pool, comm, alpha * spread + (1 - alpha) * y[lo:hi])
        change.append(float((new - f).abs().sum()))
        f = new
        if comm.rank == 0 and ((it + 1) % every == 0 or change[-1] < tol):
            log.info("label spreading: iteration %d, L1 change %.3g", it + 1, change[-1])
        if change[-1] < tol:
            break
    return f, {"iterations": len(change), "change": change, "neighbours": int(graph.shape[1]),
               "edges": int(keep.sum())}


def _whole(pool: Pool, comm: Collectives, values: torch.Tensor) -> torch.Tensor:
    """:meth:`Pool.whole` of a CPU tensor, back on the CPU (the collective runs on the pool's device)."""
    return pool.whole(values.to(pool.device), comm).cpu()
