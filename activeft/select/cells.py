"""Hierarchical selection: cut the pool into k-means cells, select inside each cell, merge.

As the curation of Vo et al. (2024, hierarchical k-means before DINOv2's LVD-142M) and SemDeDup's
clustering step: the engine's k-means (k-means|| seeding, :data:`PARTITION_ITERATIONS` Lloyd
iterations) of a fixed uniform sample of :data:`PARTITION_SAMPLE` rows a cell gives the cells'
centroids (as faiss trains its k-means on at most ``max_points_per_centroid`` rows a centroid); one
pass over the store (a Ray task a shard) gives each row its cell, the nearest centroid, and writes the
shard's rows grouped by cell (a Parquet row group per cell, in the run's work directory); the budget is
split over the cells by their rows (:func:`~.quotas.split_budget`: largest remainders, no cell asked for
more rows than it has free; as many cells as picks: a pick each, as a flat k-means gives each cluster
one), and the selector runs on each cell alone, reading only that cell's row groups, cells in parallel
as Ray tasks (one CPU, or one GPU, each; at most ``num_workers`` at a time);
the picks are merged in rounds (every cell's first pick, then every cell's second, ...), so any prefix of
the ranking is spread over the cells. A cell's result is written to the run's work directory when it
finishes, so a stopped run redoes only the cells it had not finished. Neither the driver nor a task ever
holds the pool: the cost of a cell follows its rows, and memory one cell or one shard, what makes a pool
of any size tractable, at the price of no pick seeing across a cell border.

At few picks a cell that price is measurable (cells of a fixed share were behind a flat k-means on
Fashion-MNIST), so ``auto`` then makes a cell a pick (:func:`resolve_partitions`): the partition, fitted
on at least :data:`PICK_SAMPLE` rows with :data:`PICK_ITERATIONS` Lloyd iterations, is the budget's own
k-means, as a flat selection's, and each cell gives its one pick.

Quotas (``--balance-by``, :mod:`.quotas`) run the same way: each group of the column is a cell of its
own (cut into its share of the k-means cells when partitions are on too), with its quota as budget.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid

import numpy as np
import pyarrow as pa
import torch

from ..engine import Collectives, FlatIndex, Pool, generator, kmeans, sample_rows
from ..io import storage
from ..io.store import EmbeddingStore, embedding_array, embedding_matrix, shard_name
from ..runtime.tasks import gather, tasks, within
from .kmeans import KMeans
from .quotas import group_text, split_budget
from .registry import Selector

log = logging.getLogger(__name__)
CELL_ROWS = 250_000  # rows per cell that ``partitions="auto"`` aims at
AUTO_ABOVE = 1_000_000  # ``partitions="auto"`` cuts pools larger than this
PARTITION_ITERATIONS = 20  # Lloyd iterations of the partition (cells need not be converged clusters)
PARTITION_SAMPLE = 256  # rows a cell the partition's k-means is fitted on (faiss's max_points_per_centroid)
FEW_PICKS = 30  # picks a cell below which cells of a fixed share were behind a flat selection (RESULTS.md)
PICK_CELLS = 1024  # ``auto``'s most cells of a pick each (their partition: 2^20 rows, 1024 centroids, 100 iterations)
PICK_SAMPLE = 1 << 20  # rows at least that cells of a pick each are fitted on: their partition is the selection
PICK_ITERATIONS = KMeans.params["iterations"].default  # and its Lloyd iterations: the kmeans selector's


def parse_partitions(value) -> str | int:
    """``"auto"``, ``"off"`` or a number of cells >= 2 (an int, or its digits)."""
    text = str(value).strip()
    if text in ("auto", "off"):
        return text
    if not (re.fullmatch(r"\d+", text) and int(text) >= 2):
        raise ValueError(f"partitions {value!r}: expected auto, off or a number of cells >= 2")
    return int(text)


def resolve_partitions(partitions, rows: int, budget: int) -> int:
    """The number of cells: ``"off"`` -> 0; ``"auto"`` -> ``ceil(rows / CELL_ROWS)`` above
    :data:`AUTO_ABOVE` rows, 0 below; but where that leaves fewer than :data:`FEW_PICKS` picks a cell, a
    cell a pick (up to :data:`PICK_CELLS` cells; larger cells where the budget is smaller, with a warning):
    the partition is then the budget's own k-means, and no pick's cluster straddles a cell border; cells
    of a fixed share were behind a flat selection there, cells of a pick were not (``benchmarks/RESULTS.md``).
    A number >= 2 as given, with a warning when it is more than the picks (cells with none) or leaves
    fewer than :data:`FEW_PICKS` picks a cell."""
    cells = _cells(parse_partitions(partitions), rows, budget)
    if cells and cells < budget < FEW_PICKS * cells:
        log.warning("select: %d cells for a budget of %d (%.3g picks a cell): under %d picks a cell, cells of a "
                    "fixed share were 0.4 to 2.5 points behind a flat selection on Fashion-MNIST, cells of a pick "
                    "each were not (benchmarks/RESULTS.md); use --partitions %d, or off where the pool fits one "
                    "worker", cells, budget, budget / cells, FEW_PICKS, budget)
    return cells


def _cells(partitions, rows: int, budget: int) -> int:
    """:func:`resolve_partitions` before its few-picks warning."""
    if partitions == "off":
        return 0
    if partitions == "auto":
        if rows <= AUTO_ABOVE:
            return 0
        wanted = math.ceil(rows / CELL_ROWS)
        cells = min(budget, max(wanted, PICK_CELLS)) if budget < FEW_PICKS * wanted else wanted
        if cells < 2:
            return 0
        if cells != wanted:
            (log.warning if cells < wanted else log.info)(
                "select: partitions auto: %d cells of ~%d rows, not %d of ~%d: a cell a pick (at most %d cells) for a "
                "budget of %d", cells, math.ceil(rows / cells), wanted, CELL_ROWS, PICK_CELLS, budget)
        return cells
    if partitions > budget:
        log.warning("select: %d cells for a budget of %d: at least %d cells get no pick, and the selection "
                    "never sees their rows; use at most %d cells (--partitions)", partitions, budget,
                    partitions - budget, budget)
    return int(partitions)


def _kmeans_cells(x: np.ndarray, cells: int, seed: int, iterations: int, device: str, precision: str | None) -> dict:
    centroids, history = kmeans(Pool(torch.from_numpy(x).to(device), 0, len(x), precision), Collectives(), cells,
                                iterations=iterations, init="kmeans||", seed=seed, tag="partition")
    return {"centroids": centroids.cpu().tolist(), "inertia": history[-1], "sample": len(x)}


def fit_partition(store: EmbeddingStore, cells: int, seed: int, *, one_pick: bool = False, num_workers: int,
                  use_gpu: bool, precision: str | None) -> dict:
    """The cells' centroids, the k-means inertia and the rows it was fitted on: a fixed uniform sample of
    ``PARTITION_SAMPLE * cells`` rows, at least :data:`PICK_SAMPLE` for cells of ``one_pick`` each (all of
    a smaller pool), gathered a task a shard, then k-means in one task (:data:`PARTITION_ITERATIONS` Lloyd
    iterations, :data:`PICK_ITERATIONS` for cells of one pick). Its cost follows the cells, not the pool:
    the pool is never held."""
    size, iterations = PARTITION_SAMPLE * cells, PARTITION_ITERATIONS
    if one_pick:
        size, iterations = max(size, PICK_SAMPLE), PICK_ITERATIONS
    rows = sample_rows(len(store), min(len(store), size), generator(seed)).sort().values
    x = gather(store, rows.numpy(), num_workers)
    args = {0: (x, cells, seed, iterations, "cuda" if use_gpu else "cpu", precision)}
    return next(tasks(_kmeans_cells, args, num_workers, use_gpu))[1]


def _write_units(store_uri: str, start: int, stop: int, group: tuple | None, partition: tuple | None,
                 held: np.ndarray, dropped: np.ndarray, measured: np.ndarray, path: str, device: str) -> dict:
    """Rows ``[start, stop)`` of the store (one shard) written to ``path`` by unit, a row group each (columns
    ``unit``, ``row``, ``embedding``): a row's unit is its group (its value's place among ``group``'s
    ``(column, sorted values)``, else 0) times the cells plus its cell, the nearest of ``partition``'s
    ``(cells, centroids, precision)``; ``dropped`` rows are left out.
    -> the units written, their rows, each ``held`` row with its unit, and the float32 vectors of the
    ``measured`` rows (read in the same pass, for the coverage)."""
    store = EmbeddingStore(store_uri)
    x = store.embeddings(start, stop, dtype=store.dtype)
    unit = (np.zeros(stop - start, np.int64) if group is None else
            np.searchsorted(np.array(group[1]), group_text(store, group[0], start, stop)))
    if partition is not None:
        cells, centroids, precision = partition
        index = FlatIndex(torch.tensor(centroids, dtype=torch.float32, device=device), "l2", precision=precision)
        cell = index.search(torch.from_numpy(x.astype(np.float32, copy=False)).to(device), scores=False)[0]
        unit = unit * cells + cell.cpu().numpy()
    held = [[int(u), int(r)] for u, r in zip(unit[held - start], held, strict=True)]
    unit[dropped - start] = -1
    order = np.flatnonzero(unit >= 0)
    order = order[np.argsort(unit[order], kind="stable")]
    units, counts = np.unique(unit[order], return_counts=True)
    storage.write_parquet(path, pa.table({"unit": pa.array(unit[order]), "row": order + start,
                                          "embedding": embedding_array(x[order], store.dtype)}),
                          row_groups=counts.tolist(), use_dictionary=False)  # (a float dictionary is dead weight)
    return {"path": path, "units": units.tolist(), "rows": counts.tolist(), "held": held,
            "measured": x[measured - start].astype(np.float32)}


def regroup(store: EmbeddingStore, where: str, *, group: tuple | None = None, partition: tuple | None = None,
            exclude: np.ndarray, dropped: np.ndarray, measured: np.ndarray | None = None, num_workers: int = 1,
            use_gpu: bool = False, resume: bool = False) -> tuple[dict, np.ndarray | None]:
    """Each shard's rows grouped by unit under ``where`` (:func:`_write_units`: one pass over the store,
    shards in parallel as Ray tasks), so that a cell reads only its own rows, not every shard that holds
    one of them. -> ``({unit: (files, rows, excluded rows)}, the vectors of the sorted ``measured``
    rows)``. A resumed run reuses a finished one, without the vectors (None)."""
    done = storage.join(where, "_units.json")
    vectors = None
    if resume and storage.exists(done):
        shards = storage.read_json(done)
    else:
        measured = np.zeros(0, np.int64) if measured is None else measured
        args = {i: (store.uri, lo, hi, group, partition, within(exclude, lo, hi),
                    within(dropped, lo, hi), within(measured, lo, hi), storage.join(where, shard_name(i)),
                    "cuda" if use_gpu else "cpu")
                for i, (lo, hi) in enumerate(store.shard_bounds)}
        shards = [r for _, r in sorted(tasks(_write_units, args, num_workers, use_gpu))]
        vectors = np.concatenate([r.pop("measured") for r in shards])
        storage.write_json(done, shards)
    files, rows, held = {}, {}, {}
    for r in shards:
        for u, n in zip(r["units"], r["rows"], strict=True):
            files.setdefault(u, []).append(r["path"])
            rows[u] = rows.get(u, 0) + n
        for u, row in r["held"]:
            held.setdefault(u, []).append(row)
    return {u: (files[u], rows[u], np.array(sorted(held.get(u, [])), np.int64)) for u in files}, vectors


def read_cell(files: list[str], unit: int) -> tuple[np.ndarray, np.ndarray]:
    """One cell's global rows (ascending) and float32 embeddings, from the row groups of ``unit`` in the
    :func:`regroup` ``files`` that hold it."""
    table = pa.concat_tables([storage.read_parquet(f, ["row", "embedding"], filters=[("unit", "=", unit)])
                              for f in files])
    return table.column("row").to_numpy(), embedding_matrix(table.column("embedding"))


def _select_cell(selector: Selector, files: list[str], unit: int, exclude: np.ndarray, budget: int,
                 device: str) -> dict:
    """The selector on one cell's rows alone (read from its regrouped ``files``): its picks as global
    rows, their columns, its info. A cell asked for all its free rows gives them in row order, without
    the selector (no columns)."""
    start = time.perf_counter()
    rows, x = read_cell(files, unit)
    if budget == len(rows) - len(exclude):
        return {"rows": np.setdiff1d(rows, exclude).tolist(), "columns": {}, "info": {}, "seconds": 0.0}
    result = selector.fit(Pool(torch.from_numpy(x).to(device), 0, len(rows)), Collectives(), budget,
                          torch.from_numpy(np.searchsorted(rows, exclude)), None)
    return {"rows": rows[np.asarray(result.rows)].tolist(),
            "columns": {k: np.asarray(v).tolist() for k, v in result.columns.items()},
            "info": {k: v for k, v in result.info.items() if isinstance(v, (int, float, str))},
            "seconds": round(time.perf_counter() - start, 3)}


def select_in_cells(selector: Selector, store: EmbeddingStore, budget: int, exclude: np.ndarray, cells: int, *,
                    groups: tuple[str, list[str], np.ndarray] | None = None, dropped: np.ndarray | None = None,
                    measured: np.ndarray | None = None, num_workers: int, use_gpu: bool, work: str | None,
                    resume: bool, precision: str | None) -> dict:
    """``budget`` rows of ``store`` by ``selector`` run inside ``cells`` k-means cells (module docstring;
    0: one cell), or inside each quota group of ``groups`` (the column, its values as text and each one's
    budget, :mod:`.quotas`), cut into its share of the cells: ``{"rows", "columns", "info"}`` as a flat
    selection's job returns them, with a ``cell`` column (with cells) and ``info["partitions"]``: each
    cell's group, rows, excluded rows, budget and seconds; and ``"measured"``: the vectors of the sorted
    ``measured`` rows, read in the regroup pass (None on a resumed regroup). ``dropped`` rows are never
    selected. The driver holds a few numbers a cell, never one a row."""
    start = time.perf_counter()
    if work and not resume:
        storage.delete(storage.join(work, "cells"))
        storage.delete(storage.join(work, "units"))
    parts, one_pick = {}, cells == budget  # cells of a pick: fitted as a flat k-means, a pick each
    if cells:
        path = work and storage.join(work, "partition.json")
        if resume and path and storage.exists(path):
            parts = storage.read_json(path)
        else:
            parts = fit_partition(store, cells, selector.seed, one_pick=one_pick, num_workers=num_workers,
                                  use_gpu=use_gpu, precision=precision)
            if path:
                storage.write_json(path, parts)
    # without a work directory, beside the store (as runner.run's): the tasks on every node read it
    where = storage.join(work, "units") if work else storage.join(store.uri, "_work", "cells", uuid.uuid4().hex)
    done, todo = {}, []
    try:
        found, vectors = regroup(store, where, group=None if groups is None else groups[:2], exclude=exclude,
                                 partition=(cells, parts["centroids"], precision) if cells else None,
                                 dropped=np.zeros(0, np.int64) if dropped is None else dropped, measured=measured,
                                 num_workers=num_workers, use_gpu=use_gpu, resume=resume)
        keys = np.array(sorted(found), dtype=np.int64)  # (group, cell) pairs present
        held = [found[k][2] for k in keys]
        sizes = np.array([found[k][1] for k in keys])
        free = sizes - np.array([len(h) for h in held])
        owner = keys // max(cells, 1)
        budgets = np.zeros(len(keys), dtype=np.int64)
        weights = np.ones_like(sizes) if one_pick else sizes
        for g in np.unique(owner):
            mine = owner == g
            budgets[mine] = split_budget(weights[mine], free[mine], budget if groups is None else int(groups[2][g]))
        partition_s = time.perf_counter() - start
        log.info("select: %d cells of %d to %d rows (partition and regroup in %.1f s); budgets %d to %d", len(keys),
                 sizes.min(), sizes.max(), partition_s, budgets.min(), budgets.max())
        device = "cuda" if use_gpu else "cpu"
        todo = [u for u in range(len(keys)) if budgets[u] > 0]
        for u in todo:
            path = work and storage.join(work, "cells", f"{keys[u]}.json")
            if resume and path and storage.exists(path):
                done[u] = storage.read_json(path)
        args = {u: (selector, found[keys[u]][0], int(keys[u]), held[u], int(budgets[u]), device)
                for u in todo if u not in done}
        for u, result in tasks(_select_cell, args, num_workers, use_gpu):
            done[u] = result
            if work:
                storage.write_json(storage.join(work, "cells", f"{keys[u]}.json"), result)
    finally:
        if not work or (todo and len(done) == len(todo)):
            storage.delete(where)  # kept only for a resumed run to reuse
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
    return {"rows": rows.tolist(), "columns": columns, "measured": vectors,
            "info": {"partitions": {"cells": cells,
                                    **({"partition_inertia": parts["inertia"], "partition_sample": parts["sample"]}
                                       if cells else {}),
                                    "seconds_partition": round(partition_s, 3), "cells_table": table},
                     "seconds_select": round(time.perf_counter() - start, 3)}}
