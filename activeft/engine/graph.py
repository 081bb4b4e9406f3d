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
O(m^2) per pick (m = edges per row). The ranks exchange their best rows in batches, one all-gather
for many picks (lazy greedy: gains only fall), and pick exactly what the one-pick-at-a-time greedy
picks.
"""

from __future__ import annotations

import logging
import math

import torch

from .kcenter import k_center_greedy
from .pool import Collectives, Pool, all_sum, log_every, merge_topk
from .search import (
    FlatIndex,
    _fixed_sum,
    band_factors,
    chunk_rows,
    exact_scores,
    products,
    resolve_precision,
    row_norms,
)

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


BATCH = 64  # candidates each rank offers per exchange of greedy_cover


def greedy_cover(pool: Pool, comm: Collectives, targets: torch.Tensor, weights: torch.Tensor, budget: int,
                 g: torch.Generator, exclude=(), tag: str = "cover",
                 batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """``budget`` global rows by greedy coverage (module docstring) and the gain of each pick.

    ``targets`` (local rows x e, global rows, -1 for none) and ``weights`` (same shape, in [0, 1])
    are each local row's out-edges to other rows; its edge to itself (weight 1) is added. Excluded
    rows are never picked and cover their targets from the start. A rank holds the cover of the rows
    its edges reach only (its halo: at most min(N, its edges), so memory O(N / W x e) per rank), and
    each offered row travels with its targets' covers. Once no row gains anything (the graph is
    covered), the rest are picked farthest-first from all picks (:func:`~.kcenter.k_center_greedy`,
    drawing from ``g``), with gain 0, and a warning says so.

    Lazy and batched, one collective per exchange rather than two per pick: each rank offers its
    ``batch`` best rows with their edges and the best gain left behind; every rank then replays the
    greedy on the offered rows (their gains kept exact as the picks cover their targets) while the
    best of them provably beats every row not offered (gains only fall; ties to the smaller row), so
    the picks are the sequential greedy's, for any ``batch`` and number of workers.
    """
    dev = pool.device
    itself = torch.arange(len(targets), device=dev)[:, None] + pool.offset
    w = torch.cat([torch.ones_like(itself, dtype=torch.float64), torch.where(targets >= 0, weights.double(), 0.0)], 1)
    # the cover of the rows this rank's edges reach (its halo, sorted global rows), not of the whole pool;
    # t: each edge's place in the halo; by_target[starts[h]:starts[h + 1]]: the edges into halo row h
    edges, by_target = torch.sort(torch.cat([itself, targets.clamp(min=0)], 1).flatten(), stable=True)
    first = torch.ones(len(edges), dtype=torch.bool, device=dev)
    first[1:] = edges[1:] != edges[:-1]
    halo, starts = edges[first], torch.cat([torch.nonzero(first).flatten(), torch.tensor([len(edges)], device=dev)])
    t = torch.empty_like(edges).scatter_(0, by_target, torch.cumsum(first, 0) - 1).reshape(w.shape)
    e = t.shape[1]
    cover = torch.zeros(len(halo), dtype=torch.float64, device=dev)
    free = torch.ones(len(t), dtype=torch.bool, device=dev)

    def raise_cover(to: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Raise the cover of global rows ``to`` to ``value`` (those in the halo); the local rows whose gain
        changed."""
        if not len(halo):
            return torch.empty(0, dtype=torch.long, device=dev)
        at = torch.searchsorted(halo, to).clamp_(max=len(halo) - 1)
        rose = (halo[at] == to) & (value > cover[at])
        to, value = at[rose], value[rose]
        cover.scatter_reduce_(0, to, value, "amax")
        to = torch.unique(to)
        lo, hi = starts[to], starts[to + 1]
        if not len(to) or int((hi - lo).sum()) == 0:
            return torch.empty(0, dtype=torch.long, device=dev)
        spans = torch.repeat_interleave(lo - torch.cumsum(hi - lo, 0) + (hi - lo), hi - lo)
        return torch.unique(by_target[spans + torch.arange(int((hi - lo).sum()), device=dev)] // e)

    def gains(values: torch.Tensor, to: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return _fixed_sum((weight - values[to]).clamp_(min=0))

    def offer() -> torch.Tensor:
        """This rank's ``batch`` best free rows (ties to the smaller row) as rows of
        ``[gain, row, targets..., weights..., their covers...]``, padded with gain -inf, and a last row
        ``[bound, first]``: every row not offered gains at most ``bound``, and one that gains exactly
        ``bound`` is ``first`` or after it."""
        k = min(batch + 1, len(gain))
        top = torch.topk(gain, k).values if k else gain.new_zeros(0)
        bound = float(top[-1]) if k == batch + 1 else -torch.inf
        above = torch.nonzero(gain > bound).flatten()
        ties = torch.nonzero(gain == bound).flatten() if bound > -torch.inf else above[:0]
        mine = torch.cat([above, ties[:batch - len(above)]])
        first = float(ties[batch - len(above)] + pool.offset) if len(ties) > batch - len(above) else torch.inf
        packed = torch.full((batch + 1, 2 + 3 * e), -torch.inf, dtype=torch.float64, device=dev)
        packed[:len(mine), 0], packed[:len(mine), 1] = gain[mine], (mine + pool.offset).double()
        packed[:len(mine), 2:2 + e], packed[:len(mine), 2 + e:2 + 2 * e] = halo[t[mine]].double(), w[mine]
        packed[:len(mine), 2 + 2 * e:] = cover[t[mine]]
        packed[batch, :2] = torch.tensor([bound, first], dtype=torch.float64)
        return packed

    exclude = torch.as_tensor(list(exclude), dtype=torch.long)
    if len(exclude):
        mask, local = pool.local(exclude)
        packed = torch.zeros(len(exclude), 2, e, dtype=torch.float64, device=dev)
        packed[mask, 0], packed[mask, 1] = halo[t[local]].double(), w[local]
        packed = comm.all_reduce(packed)
        raise_cover(packed[:, 0].long().flatten(), packed[:, 1].flatten())
        free[local] = False
    gain = torch.where(free, gains(cover, t, w), -torch.inf)
    chosen, got, every, exchanges = [], [], log_every(budget), 0
    while len(chosen) < budget:
        offered = comm.all_gather(offer())  # (world, batch + 1, 2 + 3e): the one collective of an exchange
        exchanges += 1
        bounds, firsts = offered[:, batch, 0], offered[:, batch, 1]
        offered = offered[:, :batch].reshape(-1, 2 + 3 * e)
        offered = offered[offered[:, 0] > -torch.inf]
        rows, weight = offered[:, 1].long(), offered[:, 2 + e:2 + 2 * e]
        # the offered rows' targets and their covers, as the ranks holding them sent them (every halo agrees)
        reached, to = torch.unique(offered[:, 2:2 + e].long(), return_inverse=True)
        near = cover.new_zeros(len(reached)).scatter_reduce_(0, to.flatten(), offered[:, 2 + 2 * e:].flatten(), "amax")
        now, picks, taken = offered[:, 0].clone(), [], []
        while len(chosen) < budget:
            v = float(now.max()) if len(now) else -torch.inf
            tied = torch.nonzero(now == v).flatten()
            best = int(tied[torch.argmin(rows[tied])]) if len(tied) else -1  # ties to the smaller row
            if v <= 0 or (picks and not bool(((v > bounds) | ((v == bounds) & (rows[best] < firsts))).all())):
                break  # covered, or a row not offered might beat it: exchange again
            picks.append(int(rows[best]))
            taken.append(best)
            chosen.append(picks[-1])
            got.append(v)
            near.scatter_reduce_(0, to[best], weight[best], "amax")
            now[best] = -torch.inf
            left = now > -torch.inf
            now[left] = gains(near, to[left], weight[left])
            if comm.rank == 0 and len(chosen) % every == 0:
                log.info("%s: %d/%d picked, gain %.4g, coverage gained %.4f", tag, len(chosen), budget, got[-1],
                         sum(got) / pool.size)
        if not picks:  # the best row gains nothing: the graph is covered
            if comm.rank == 0:
                log.warning("%s: the graph is covered after %d of %d picks; the other %d are picked "
                            "farthest-first", tag, len(chosen), budget, budget - len(chosen))
            taken = [*exclude.tolist(), *chosen]
            rest = k_center_greedy(pool, comm, budget - len(chosen), g, taken, tag=f"{tag} (farthest-first)")
            return torch.tensor(chosen + rest.tolist()), torch.tensor(got + [0.0] * len(rest), dtype=torch.float64)
        taken = torch.tensor(taken, device=dev)  # the exchange's picks raise this rank's cover at once
        changed = raise_cover(reached[to[taken]].flatten(), weight[taken].flatten())
        _, local = pool.local(torch.tensor(picks))
        free[local] = False
        changed = torch.unique(torch.cat([changed, local]))
        gain[changed] = torch.where(free[changed], gains(cover, t[changed], w[changed]), -torch.inf)
    log.debug("%s: %d picks in %d exchanges, a cover of %d rows on rank %d", tag, len(chosen), exchanges, len(halo),
              comm.rank)
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(got, dtype=torch.float64)


def border_probe(pool: Pool, centroids: torch.Tensor, cells: torch.Tensor, radius: float,
                 slack: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, probe)``: for each local row ``x`` (of cell ``a``, its nearest of ``centroids``) the cells
    ``b`` that may hold a row within ``radius`` of it: those with
    ``|x - c_b|^2 - |x - c_j|^2 <= 2 radius |c_j - c_b| + slack`` (float64) for every cell ``j``, its
    own among them; local rows and cells, sorted by cell.

    Exact, not a heuristic: ``f(z) = |z - c_b|^2 - |z - c_j|^2`` is affine with gradient
    ``2 (c_j - c_b)``, and a row ``y`` of ``b`` has ``f(y) <= 0`` for every ``j`` (``slack`` covers the
    float32 rounding of its assignment), so ``|x - y| <= radius`` implies the condition: no pair within
    ``radius`` escapes across a cell border. The test against ``j = a`` goes first; the pairs it leaves
    are tested against every ``j``. Cost O(N C D / W) float64 products and O(N P C / W) for P cells
    left per row (C cells), no collective.
    """
    c = centroids.detach().cpu().double()
    n_cells = len(c)
    between = torch.cdist(c, c)
    c2 = (c * c).sum(1)
    own = cells.cpu().long()
    rows, probe, step = [], [], chunk_rows(n_cells, 8)
    for lo in range(0, len(pool.x), step):
        x = pool.x[lo:lo + step].cpu().double()
        d2 = (x * x).sum(1, keepdim=True) + c2 - 2 * x @ c.T
        a = own[lo:lo + len(x)]
        gap = d2 - d2.gather(1, a[:, None]) - 2 * radius * between[a] - slack
        gap[torch.arange(len(x)), a] = -1  # its own cell, whatever the rounding
        i, b = (gap <= 0).nonzero(as_tuple=True)
        keep = torch.ones(len(i), dtype=torch.bool)
        for p in range(0, len(i), chunk_rows(n_cells, 8)):  # every cell j's border with b, not only a's
            ip, bp = i[p:p + chunk_rows(n_cells, 8)], b[p:p + chunk_rows(n_cells, 8)]
            g = d2[ip, bp][:, None] - d2[ip] - 2 * radius * between[bp] - slack
            keep[p:p + len(ip)] = (g <= 0).all(1) | (bp == a[ip])
        rows.append(i[keep] + lo)
        probe.append(b[keep])
    rows, probe = (torch.cat(rows), torch.cat(probe)) if rows else (torch.zeros(0, dtype=torch.long),) * 2
    order = torch.sort(probe, stable=True).indices
    return rows[order], probe[order]


def within(pool: Pool, comm: Collectives, threshold: float, cells: torch.Tensor | None = None,
           probe: tuple[torch.Tensor, torch.Tensor] | None = None, max_pairs: int = EDGES):
    """``(src, dst, score)``: every pair of rows with inner product ``>= threshold``, ``src < dst``
    (global rows), each once, found from the rank holding ``src``: the range-search twin of
    :func:`neighbours`, over cells (one cell, the whole pool, by default). Each cell's rows are
    gathered to every rank in blocks, once, and searched by the local rows that probe it
    (``probe``: ``(local rows, cells)`` pairs, e.g. :func:`border_probe`; by default every row its own cell).

    Candidates come in the pool's precision; every one within the error band of ``threshold``
    (:func:`~.search.band_factors`) is re-scored exactly (:func:`~.search.exact_scores`) and kept when
    that score is ``>= threshold``: the pairs are exactly those of the exact scores among the rows
    searched, the same for any number of workers. No pair count is truncated: more than
    ``max_pairs`` pairs raise ``ValueError`` on every rank. Memory: one block, one chunk of products
    and the pairs.
    """
    n_local, dev = len(pool.x), pool.device
    own = torch.zeros(n_local, dtype=torch.long, device=dev) if cells is None else cells.to(dev).long()
    every_cell = pool.whole(own, comm).cpu()
    counts = torch.bincount(every_cell)
    members = torch.split(torch.sort(every_cell, stable=True).indices, counts.tolist())
    if probe is None:
        probe = torch.sort(own.cpu(), stable=True)
        probe = (probe.indices, probe.values)
    searched = probe[1] < len(counts)  # cells past the last non-empty one hold nothing to search
    probe = (probe[0][searched], probe[1][searched])
    queries = torch.split(probe[0], torch.bincount(probe[1], minlength=len(counts)).tolist())
    precision = resolve_precision(pool.precision, dev)
    a, b = band_factors(precision, "ip", pool.x.shape[1])
    norm = row_norms(pool.x).max().double() if n_local else torch.zeros((), dtype=torch.float64, device=dev)
    norm = float(comm.all_gather(norm.reshape(1).to(dev)).max())
    floor = threshold - 2 * (a + b) * norm * norm  # candidates below it score below threshold exactly
    src, dst, score, total = [], [], [], 0
    for c in range(len(counts)):
        q = queries[c].to(dev)
        for lo in range(0, int(counts[c]), BLOCK):  # a collective: every rank takes part, with or without queries
            block = members[c][lo:lo + BLOCK].to(dev)
            vectors = pool.gather_rows(block, comm)
            step = chunk_rows(len(block), 4, dev)
            for qlo in range(0, len(q), step):
                qs = q[qlo:qlo + step]
                i, j = (products(pool.x[qs].float(), vectors, precision) >= floor).nonzero(as_tuple=True)
                keep = block[j] > qs[i] + pool.offset
                i, j = i[keep], j[keep]
                exact = exact_scores(pool.x, vectors, j, "ip", rows=qs[i])
                hit = exact >= threshold
                src.append((qs[i] + pool.offset)[hit].cpu())
                dst.append(block[j][hit].cpu())
                score.append(exact[hit].cpu())
            total = int(all_sum(float(sum(len(s) for s in src)), comm, dev))
            if total > max_pairs:
                raise ValueError(f"more than {max_pairs} pairs of rows score >= {threshold}; use a higher threshold")
    empty = torch.empty(0, dtype=torch.long)
    return (torch.cat(src) if src else empty, torch.cat(dst) if dst else empty,
            torch.cat(score) if score else torch.empty(0))


def gather_all(values: torch.Tensor, comm: Collectives, device=None) -> torch.Tensor:
    """Every rank's 1-D ``values``, concatenated in rank order, on every rank (CPU; the collectives on
    ``device``, the pool's)."""
    sizes = comm.all_gather(torch.tensor([len(values)], device=device)).flatten().cpu()
    padded = torch.zeros(int(sizes.max()), dtype=values.dtype, device=device)
    padded[:len(values)] = values
    parts = comm.all_gather(padded).cpu()
    return torch.cat([parts[r, :int(n)] for r, n in enumerate(sizes.tolist())])
