"""Hierarchical selection: cut the pool into k-means cells, select inside each cell, merge.

As the curation of Vo et al. (2024, hierarchical k-means before DINOv2's LVD-142M) and SemDeDup's
clustering step: the engine's distributed k-means (k-means|| seeding, :data:`PARTITION_ITERATIONS`
Lloyd iterations) gives each row a cell; the budget is split over the cells by their rows
(:func:`~.quotas.split_budget`: largest remainders, no cell asked for more rows than it has free); the
selector runs on each cell alone, reading only that cell's rows, cells in parallel as Ray tasks (one
CPU, or one GPU, each; at most ``num_workers`` at a time); the picks are merged in rounds (every
cell's first pick, then every cell's second, ...), so any prefix of the ranking is spread over the
cells. A cell's result is written to the run's work directory when it finishes, so a stopped run
redoes only the cells it had not finished. The cost of a cell follows its rows, not the pool's: what
makes a pool of any size tractable, at the price of no pick seeing across a cell border.

Quotas (``--balance-by``, :mod:`.quotas`) run the same way: each group of the column is a cell of its
own (cut into its share of the k-means cells when partitions are on too), with its quota as budget.
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
from .quotas import split_budget
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


def _partition_job(cells: int, seed: int, pool, comm, checkpoints) -> dict:
    """Every row's cell: k-means of the whole pool, each row to its nearest centroid."""
    centroids, history = kmeans(pool, comm, cells, iterations=PARTITION_ITERATIONS, init="kmeans||", seed=seed,
                                tag="partition")
    assign = FlatIndex(centroids, "l2", precision=pool.precision).search(pool.x, scores=False)[0]
    return {"cells": pool.whole(assign, comm).cpu().tolist(), "inertia": history[-1]}


def _select_cell(selector: Selector, store_uri: str, rows: np.ndarray, exclude: np.ndarray, budget: int,
                 device: str) -> dict:
    """The selector on one cell's rows alone: its picks as global rows, their columns, its info. A cell
    asked for all its free rows gives them in row order, without the selector (no columns)."""
    start = time.perf_counter()
    if budget == len(rows) - len(exclude):
        return {"rows": np.setdiff1d(rows, exclude).tolist(), "columns": {}, "info": {}, "seconds": 0.0}
    x = torch.from_numpy(EmbeddingStore(store_uri).embeddings_at(rows)).to(device)
    local = torch.from_numpy(np.searchsorted(rows, exclude))
    result = selector.fit(Pool(x, 0, len(rows)), Collectives(), budget, local, None)
    return {"rows": rows[np.asarray(result.rows)].tolist(),
            "columns": {k: np.asarray(v).tolist() for k, v in result.columns.items()},
            "info": {k: v for k, v in result.info.items() if isinstance(v, (int, float, str))},
            "seconds": round(time.perf_counter() - start, 3)}


def select_in_cells(selector: Selector, store: EmbeddingStore, budget: int, exclude: np.ndarray, cells: int, *,
                    groups: tuple[np.ndarray, np.ndarray] | None = None, dropped: np.ndarray | None = None,
                    num_workers: int, use_gpu: bool, work: str | None, resume: bool, precision: str | None) -> dict:
    """``budget`` rows of ``store`` by ``selector`` run inside ``cells`` k-means cells (module docstring;
    0: one cell), or inside each quota group of ``groups`` (each row's group and each group's budget,
    :mod:`.quotas`), cut into its share of the cells: ``{"rows", "columns", "info"}`` as a flat
    selection's job returns them, with a ``cell`` column (with cells) and ``info["partitions"]``: each
    cell's group, rows, excluded rows, budget and seconds. ``dropped`` rows are never selected."""
    start = time.perf_counter()
    if work and not resume:
        storage.delete(storage.join(work, "cells"))
    assign, parts = np.zeros(len(store), dtype=np.int64), {}
    if cells:
        parts = run(functools.partial(_partition_job, cells, selector.seed), store, num_workers=num_workers,
                    use_gpu=use_gpu, work=work and storage.join(work, "partition"), resume=resume,
                    precision=precision)
        assign = np.asarray(parts["cells"], dtype=np.int64)
    group = np.zeros(len(store), dtype=np.int64) if groups is None else groups[0]
    keys, unit = np.unique(group * max(cells, 1) + assign, return_inverse=True)  # (group, cell) pairs present
    if dropped is not None:
        unit[dropped] = -1
    order = np.argsort(unit, kind="stable")  # by cell, rows ascending; dropped rows (-1) first, left out
    bounds = np.searchsorted(unit[order], np.arange(len(keys) + 1))
    members = [order[bounds[u]:bounds[u + 1]] for u in range(len(keys))]
    held = [exclude[np.isin(exclude, m)] for m in members]
    sizes = np.array([len(m) for m in members])
    free = sizes - np.array([len(h) for h in held])
    owner = keys // max(cells, 1)
    budgets = np.zeros(len(keys), dtype=np.int64)
    for g in np.unique(owner):
        mine = owner == g
        budgets[mine] = split_budget(sizes[mine], free[mine], budget if groups is None else int(groups[1][g]))
    partition_s = time.perf_counter() - start
    log.info("select: %d cells of %d to %d rows (partition in %.1f s); budgets %d to %d", len(keys), sizes.min(),
             sizes.max(), partition_s, budgets.min(), budgets.max())
    device = "cuda" if use_gpu else "cpu"
    done = {}
    todo = [u for u in range(len(keys)) if budgets[u] > 0]
    for u in todo:
        path = work and storage.join(work, "cells", f"{keys[u]}.json")
        if resume and path and storage.exists(path):
            done[u] = storage.read_json(path)
    args = {u: (selector, store.uri, members[u], held[u], int(budgets[u]), device) for u in todo if u not in done}
    for u, result in _each(args, num_workers, use_gpu):
        done[u] = result
        if work:
            storage.write_json(storage.join(work, "cells", f"{keys[u]}.json"), result)
    ordered = [done[u] for u in todo]
    rank = np.concatenate([np.arange(len(r["rows"])) for r in ordered])
    at = np.concatenate([np.full(len(r["rows"]), u) for u, r in zip(todo, ordered, strict=True)])
    order = np.lexsort((at, rank))  # round by round, cells in order
    rows = np.concatenate([np.asarray(r["rows"], dtype=np.int64) for r in ordered])[order]
    names = sorted({k for r in ordered for k in r["columns"]})
    columns = {k: [v for r in ordered for v in r["columns"].get(k, [None] * len(r["rows"]))] for k in names}
    columns = {k: [v[i] for i in order] for k, v in columns.items()}
    if cells:
        columns["cell"] = (keys[at] % cells)[order].tolist()
    table = [{**({"group": int(owner[u])} if groups is not None else {}),
              **({"cell": int(keys[u] % cells)} if cells else {}), "rows": int(sizes[u]), "excluded": len(held[u]),
              "budget": int(budgets[u]), "seconds": done[u]["seconds"] if u in done else 0.0}
             for u in range(len(keys))]
    return {"rows": rows.tolist(), "columns": columns,
            "info": {"partitions": {"cells": cells, **({"partition_inertia": parts["inertia"]} if cells else {}),
                                    "seconds_partition": round(partition_s, 3), "cells_table": table},
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
