"""Near-duplicate groups of the sharded pool (semantic deduplication, as SemDeDup, Abbas et al. 2023,
but exact over the pairs: no per-cluster shortcut).

Two rows are duplicates when their inner product (cosine: the store's rows are unit vectors) is
``>= threshold``; the groups are the connected components of that graph, so any two rows kept from
different groups score below the threshold. The pairs come from :func:`~.graph.within`: the whole
pool as one cell up to ``one_cell_up_to`` rows, beyond that k-means cells of ``cell_rows`` (:data:`~.graph.CELL`)
rows, each row searching the cells of :func:`~.graph.border_probe` (every cell that could hold a row
within the threshold's distance of it), so no pair escapes across a cell border and
every pair is decided on its exact score. Each group keeps one row: the ``preferred`` (labeled) row
if it has one (the first), otherwise its first row (``first``) or the row nearest its mean
(``central``, Euclidean, float64; ties to the smaller row).

Every rank gathers the pairs (O(pairs) memory) and the rows in groups (O(rows in groups x D)), and
computes the components (min-label propagation with pointer jumping: the label of a component is its
smallest row) and the kept rows itself, in one order: the same bits for any number of workers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from .graph import BLOCK, CELL, EDGES, EXACT_UP_TO, border_probe, gather_all, within
from .pool import Collectives, Pool, all_sum
from .search import FlatIndex, _fixed_sum, exact_scores, row_norms

log = logging.getLogger(__name__)
KEEP = ("first", "central")
ROUNDING = 2.0 ** -21  # a threshold of 1 keeps pairs equal up to float32 rounding: products >= 1 - this


@dataclass
class Duplicates:
    """The rows that are not kept (global, sorted), the kept row of each's group and their exact inner
    product, and run ``info`` (pairs, groups, rows in groups, cells searched)."""

    rows: torch.Tensor
    kept: torch.Tensor
    similarity: torch.Tensor
    info: dict = field(default_factory=dict)


def duplicate_groups(pool: Pool, comm: Collectives, threshold: float, *, keep: str = "first",
                     preferred: torch.Tensor | None = None, one_cell_up_to: int = EXACT_UP_TO,
                     cell_rows: int = CELL, max_pairs: int = EDGES, seed: int = 0) -> Duplicates:
    """The near-duplicate groups of the pool at ``threshold`` in (0, 1] (module docstring), the same on
    every rank. ``preferred``: global rows kept before any other of their group (labeled rows)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(KEEP)}; got {keep!r}")
    limit = min(threshold, 1 - ROUNDING)
    cells = probe = None
    n_cells = 1
    if pool.size > one_cell_up_to:
        from .kmeans import kmeans

        n_cells = math.ceil(pool.size / cell_rows)
        centroids, _ = kmeans(pool, comm, n_cells, iterations=10, init="kmeans||", seed=seed, tag="dedup cells")
        cells = FlatIndex(centroids, "l2", precision=pool.precision).search(pool.x, scores=False)[0]
        local = row_norms(pool.x).max().double() if len(pool.x) else torch.zeros((), dtype=torch.float64)
        norm = float(comm.all_gather(local.reshape(1).to(pool.device)).max())
        radius = math.sqrt(max(2 * norm * norm * (1 + 1e-5) - 2 * limit, 0.0))  # |x - y| of a pair >= limit
        probe = border_probe(pool, centroids, cells, radius)
    src, dst, _ = within(pool, comm, limit, cells, probe, max_pairs)
    dev = pool.device
    src, dst = gather_all(src.to(dev), comm, dev), gather_all(dst.to(dev), comm, dev)
    order = torch.argsort(src * pool.size + dst)  # one global order of the pairs
    src, dst = src[order], dst[order]
    nodes = torch.unique(torch.cat([src, dst]))  # sorted: the rows in groups
    label = components(torch.searchsorted(nodes, src), torch.searchsorted(nodes, dst), len(nodes))
    kept = _kept(pool, comm, nodes, label, keep, preferred)
    drop = kept != nodes
    rows, kept = nodes[drop], kept[drop]
    similarity = _similarity(pool, comm, rows, kept)
    searched = float(all_sum(float(len(probe[0])), comm, dev)) / pool.size if probe is not None else 1.0
    info = {"threshold": threshold, "keep": keep, "pairs": len(src), "groups": int((~drop).sum()),
            "rows_in_groups": len(nodes), "duplicates": len(rows), "cells": n_cells,
            "cells_searched_per_row": round(searched, 3)}
    if comm.rank == 0:
        log.info("dedup: %d pairs >= %g, %d groups of %d rows: %d duplicates", len(src), threshold,
                 info["groups"], len(nodes), len(rows))
    return Duplicates(rows, kept, similarity, info)


def components(src: torch.Tensor, dst: torch.Tensor, n: int) -> torch.Tensor:
    """The connected components of ``n`` nodes with edges ``src - dst``: each node's label is the
    smallest node of its component (min-label propagation, hooking labels on labels, then pointer
    jumping to a fixed point). O(edges) per round; few rounds in practice."""
    label = torch.arange(n)
    while True:
        low = torch.minimum(label[src], label[dst])
        new = label.clone()
        for at in (src, dst, label[src], label[dst]):  # the ends and their labels take the smaller label
            new.scatter_reduce_(0, at, low, "amin")
        while True:
            jumped = new[new]
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, label):
            return label
        label = new


def _kept(pool, comm, nodes, label, keep, preferred) -> torch.Tensor:
    """The kept global row of each node's group (``label``: index into ``nodes`` of its smallest row)."""
    group = label
    if preferred is not None and len(preferred):
        chosen = torch.isin(nodes, preferred.cpu())
        first = torch.full((len(nodes),), len(nodes)).scatter_reduce(0, group[chosen],
                                                                     torch.nonzero(chosen).flatten(), "amin")
        has = first < len(nodes)
    else:
        has = torch.zeros(len(nodes), dtype=torch.bool)
        first = group
    if keep == "first":
        best = group.clone()
    else:  # central: the row nearest its group's mean, ties to the smaller row
        x = _rows(pool, comm, nodes).double()
        sums = torch.zeros(len(nodes), x.shape[1], dtype=torch.float64).index_add_(0, group, x)
        size = torch.bincount(group, minlength=len(nodes)).double()
        d2 = _fixed_sum((x - sums[group] / size[group, None]).square())
        lowest = torch.full((len(nodes),), torch.inf, dtype=torch.float64).scatter_reduce(0, group, d2, "amin")
        at = torch.nonzero(d2 == lowest[group]).flatten()
        best = torch.full((len(nodes),), len(nodes)).scatter_reduce(0, group[at], at, "amin")
    pick = torch.where(has, first, best)  # per group (indexed by its label)
    return nodes[pick[group]]


def _rows(pool, comm, rows: torch.Tensor) -> torch.Tensor:
    """The float32 vectors of global ``rows`` on every rank (CPU), gathered a block at a time."""
    parts = [pool.gather_rows(rows[lo:lo + BLOCK].to(pool.device), comm).cpu() for lo in range(0, len(rows), BLOCK)]
    return torch.cat(parts) if parts else torch.empty(0, pool.x.shape[1])


def _similarity(pool, comm, rows, kept) -> torch.Tensor:
    """The exact inner product of each row with its kept row."""
    if not len(rows):
        return torch.empty(0)
    x, y = _rows(pool, comm, rows), _rows(pool, comm, kept)
    return exact_scores(x, y, torch.arange(len(rows)), "ip")


def without(pool: Pool, dropped: torch.Tensor) -> Pool:
    """The pool less the sorted global rows ``dropped``, renumbered (:func:`renumber`): the same rows on
    every rank less its dropped ones (a copy of them)."""
    lo, hi = pool.offset, pool.offset + len(pool.x)
    dropped = dropped.cpu()
    keep = ~torch.isin(torch.arange(lo, hi), dropped)
    return Pool(pool.x[keep.to(pool.device)], lo - int(torch.searchsorted(dropped, lo)), pool.size - len(dropped),
                pool.precision)


def renumber(rows: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Global rows (none of them dropped) as rows of :func:`without`'s pool."""
    return rows - torch.searchsorted(dropped.cpu(), rows.cpu())


def original(rows: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Rows of :func:`without`'s pool as global rows: row ``s`` is the global row with ``s`` kept rows
    before it (``dropped[i] - i`` kept rows come before ``dropped[i]``)."""
    dropped, rows = dropped.cpu(), rows.cpu().contiguous()
    return rows + torch.searchsorted(dropped - torch.arange(len(dropped)), rows, right=True)
