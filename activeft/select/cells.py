"""Hierarchical selection: cut the pool into k-means cells, select inside each cell, merge.

As the curation of Vo et al. (2024, hierarchical k-means before DINOv2's LVD-142M) and SemDeDup's
clustering step: the engine's distributed k-means (k-means|| seeding, :data:`PARTITION_ITERATIONS`
Lloyd iterations) gives each row a cell; the budget is split over the cells by their rows
(:func:`split_budget`: largest remainders, no cell asked for more rows than it has free); the
selector runs on each cell alone, reading only that cell's rows, cells in parallel as Ray tasks (one
CPU, or one GPU, each; at most ``num_workers`` at a time); the picks are merged in rounds (every
cell's first pick, then every cell's second, ...), so any prefix of the ranking is spread over the
cells. A cell's result is written to the run's work directory when it finishes, so a stopped run
redoes only the cells it had not finished. The cost of a cell follows its rows, not the pool's: what
makes a pool of any size tractable, at the price of no pick seeing across a cell border.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time

import numpy as np
import torch

from ..engine import Collectives, FlatIndex, Pool, kmeans
from ..io import storage
from ..io.store import EmbeddingStore
from ..runtime.runner import run
from .registry import Selector

log = logging.getLogger(__name__)
CELL_ROWS = 250_000  # rows per cell that ``partitions="auto"`` aims at
AUTO_ABOVE = 1_000_000  # ``partitions="auto"`` cuts pools larger than this
PARTITION_ITERATIONS = 20  # Lloyd iterations of the partition (cells need not be converged clusters)


def parse_partitions(value) -> str | int:
    """``"auto"``, ``"off"`` or a number of cells >= 2 (an int, or its digits)."""
    text = str(value).strip()
    if text in ("auto", "off"):
        return text
    if not (re.fullmatch(r"\d+", text) and int(text) >= 2):
        raise ValueError(f"partitions {value!r}: expected auto, off or a number of cells >= 2")
    return int(text)


def resolve_partitions(partitions, rows: int) -> int:
    """The number of cells: ``"off"`` -> 0; ``"auto"`` -> ``ceil(rows / CELL_ROWS)`` above
    :data:`AUTO_ABOVE` rows, else 0; a number >= 2 as given."""
    partitions = parse_partitions(partitions)
    if partitions == "off":
        return 0
    if partitions == "auto":
        return math.ceil(rows / CELL_ROWS) if rows > AUTO_ABOVE else 0
    return int(partitions)


def split_budget(sizes: np.ndarray, free: np.ndarray, budget: int) -> np.ndarray:
    """Each cell's share of ``budget`` by its rows (``sizes``): the floor of its exact share, then one
    more for the largest remainders (ties to the smaller cell); a cell with fewer ``free`` rows than
    its share gives them all, and the rest is split over the others by the same rule."""
    out = np.zeros(len(sizes), dtype=np.int64)
    open_ = free > 0
    while budget > out.sum() and open_.any():
        left = budget - out.sum()
        share = left * sizes * open_ / max((sizes * open_).sum(), 1)
        add = np.floor(share).astype(np.int64)
        extra = left - add.sum()
        order = np.lexsort((np.arange(len(sizes)), -(share - add)))  # largest remainder, then the smaller cell
        add[order[:extra]] += 1
        out = np.minimum(out + add, free)
        open_ = out < free
    return out


def _partition_job(cells: int, seed: int, pool, comm, checkpoints) -> dict:
    """Every row's cell: k-means of the whole pool, each row to its nearest centroid."""
    centroids, history = kmeans(pool, comm, cells, iterations=PARTITION_ITERATIONS, init="kmeans||", seed=seed,
                                tag="partition")
    assign = FlatIndex(centroids, "l2", precision=pool.precision).search(pool.x, scores=False)[0]
    return {"cells": pool.whole(assign, comm).cpu().tolist(), "inertia": history[-1]}


def _select_cell(selector: Selector, store_uri: str, rows: np.ndarray, exclude: np.ndarray, budget: int,
                 device: str) -> dict:
    """The selector on one cell's rows alone: its picks as global rows, their columns, its info."""
    start = time.perf_counter()
    x = torch.from_numpy(EmbeddingStore(store_uri).embeddings_at(rows)).to(device)
    local = torch.from_numpy(np.searchsorted(rows, exclude))
    result = selector.fit(Pool(x, 0, len(rows)), Collectives(), budget, local, None)
    return {"rows": rows[np.asarray(result.rows)].tolist(),
            "columns": {k: np.asarray(v).tolist() for k, v in result.columns.items()},
            "info": {k: v for k, v in result.info.items() if isinstance(v, (int, float, str))},
            "seconds": round(time.perf_counter() - start, 3)}


def select_in_cells(selector: Selector, store: EmbeddingStore, budget: int, exclude: np.ndarray, cells: int, *,
                    num_workers: int, use_gpu: bool, work: str | None, resume: bool, precision: str | None) -> dict:
    """``budget`` rows of ``store`` by ``selector`` run inside ``cells`` k-means cells (module docstring):
    ``{"rows", "columns", "info"}`` as a flat selection's job returns them, with a ``cell`` column and
    ``info["partitions"]``: the cells, and each cell's rows, excluded rows, budget and seconds."""
    start = time.perf_counter()
    if work and not resume:
        storage.delete(storage.join(work, "cells"))
    parts = run(functools.partial(_partition_job, cells, selector.seed), store, num_workers=num_workers,
                use_gpu=use_gpu, work=work and storage.join(work, "partition"), resume=resume, precision=precision)
    assign = np.asarray(parts["cells"], dtype=np.int64)
    members = [np.flatnonzero(assign == c) for c in range(cells)]
    held = [exclude[np.isin(exclude, m)] for m in members]
    sizes = np.array([len(m) for m in members])
    budgets = split_budget(sizes, sizes - np.array([len(h) for h in held]), budget)
    partition_s = time.perf_counter() - start
    log.info("select: %d cells of %d to %d rows (k-means in %.1f s); budgets %d to %d", cells, sizes.min(),
             sizes.max(), partition_s, budgets.min(), budgets.max())
    device = "cuda" if use_gpu else "cpu"
    done = {}
    todo = [c for c in range(cells) if budgets[c] > 0]
    for c in todo:
        path = work and storage.join(work, "cells", f"{c}.json")
        if resume and path and storage.exists(path):
            done[c] = storage.read_json(path)
    args = {c: (selector, store.uri, members[c], held[c], int(budgets[c]), device) for c in todo if c not in done}
    for c, result in _each(args, num_workers, use_gpu):
        done[c] = result
        if work:
            storage.write_json(storage.join(work, "cells", f"{c}.json"), result)
    ordered = [done[c] for c in todo]
    rank = np.concatenate([np.arange(len(r["rows"])) for r in ordered])
    cell = np.concatenate([np.full(len(r["rows"]), c) for c, r in zip(todo, ordered, strict=True)])
    order = np.lexsort((cell, rank))  # round by round, cells in order
    rows = np.concatenate([np.asarray(r["rows"], dtype=np.int64) for r in ordered])[order]
    columns = {k: np.concatenate([np.asarray(r["columns"][k]) for r in ordered])[order].tolist()
               for k in ordered[0]["columns"]}
    return {"rows": rows.tolist(), "columns": {**columns, "cell": cell[order].tolist()},
            "info": {"partitions": {"cells": cells, "partition_inertia": parts["inertia"],
                                    "seconds_partition": round(partition_s, 3),
                                    "cells_table": [{"cell": c, "rows": int(sizes[c]), "excluded": len(held[c]),
                                                     "budget": int(budgets[c]),
                                                     "seconds": done[c]["seconds"] if c in done else 0.0}
                                                    for c in range(cells)]},
                     "seconds_select": round(time.perf_counter() - start, 3)}}


def _each(args: dict, num_workers: int, use_gpu: bool):
    """``(cell, result)`` of :func:`_select_cell` for each cell's arguments: in this process with one
    worker, else as Ray tasks, at most ``num_workers`` running."""
    if num_workers == 1:
        for c, a in args.items():
            yield c, _select_cell(*a)
        return
    import ray

    from ..runtime import cluster

    cluster.init()
    task = ray.remote(num_cpus=0 if use_gpu else 1, num_gpus=1 if use_gpu else 0, max_retries=3)(_select_cell)
    pending, running = list(args.items()), {}
    while pending or running:
        while pending and len(running) < num_workers:
            c, a = pending.pop(0)
            running[task.remote(*a)] = c
        ready, _ = ray.wait(list(running), num_returns=1)
        yield running.pop(ready[0]), ray.get(ready[0])
