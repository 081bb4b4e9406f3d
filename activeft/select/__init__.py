"""The select stage: choose the ``budget`` pool samples worth labeling.

Methods (registered in :mod:`.registry`): ``activeft`` (Xie et al., CVPR 2023), ``kmeans``,
``fds`` (k-center greedy) and ``random``, all on the same sharded engine and output format.

Output (a directory or prefix): ``selection.parquet`` (``id``, ``uri``, ``rank``, ``method`` and
per-method columns such as ``centroid``), ``selection.csv`` (``id,uri`` for annotators) and,
written last, ``selection.json`` (config, budget, pool size, loss / inertia history, timings,
coverage).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..dedup import DUPLICATES, count, dedup_job, duplicates_table
from ..engine import (
    DENSITY_K,
    PRECISIONS,
    generator,
    lowest,
    neighbourhood,
    resolve_precision,
    sample_rows,
)
from ..engine.dedup import original, renumber, without
from ..errors import ParameterError, StoreError, check
from ..io import protocol, storage
from ..io.ids import IDS, read_ids
from ..io.store import EmbeddingStore, open_store
from ..params import BOOL, TEXT, Rule, integer, merged_params, number, one_of, optional, parsed
from ..runtime.runner import run
from ..stages import Command, Section, stage
from . import activeft, bilaf, fds, herding, kmeans, probcover, random, typiclust  # noqa: F401  (register the methods)
from .cells import parse_partitions, resolve_partitions, select_in_cells
from .coverage import coverage_by_shard, coverage_job, measured_rows
from .quotas import check_column, column_groups, group_budgets, parse_quotas
from .registry import Selector, get_selector, list_selectors

log = logging.getLogger(__name__)
SELECTION = "selection.json"
OUTLIERS = "outliers.parquet"
KIND = protocol.Kind("selection", SELECTION,
                     r"selection\.(parquet|csv|json)|report\.html|duplicates\.parquet|outliers\.parquet")

__all__ = ["select", "Selection", "read_selection", "list_selectors", "get_selector", "resolve_budget"]


@dataclass
class Selection:
    """A finished selection: the chosen ``ids`` (in rank order), the ``table`` written to
    ``selection.parquet`` and the ``info`` written to ``selection.json``.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from activeft import Selection
    >>> sel = Selection(["a", "b"], pa.table({"id": ["a", "b"], "rank": [0, 1]}), {"budget": 2})
    >>> len(sel), sel.ids[0]
    (2, 'a')
    """

    ids: list[str]
    table: pa.Table
    info: dict
    uri: str | None = None

    def __len__(self) -> int:
        return len(self.ids)


def resolve_budget(budget, pool: int) -> int:
    """An int count, or a fraction of the pool (``"1%"``, ``"0.01"``, ``0.01``), rounded down as the
    official code does (``int(N * percent * 0.01)``)."""
    text = str(budget).strip()
    try:
        if text.endswith("%"):
            value = int(pool * float(text[:-1]) / 100)
        elif re.fullmatch(r"\d+", text):
            value = int(text)
        elif 0 < float(text) < 1:
            value = int(pool * float(text))
        else:
            value = -1
    except ValueError:
        value = -1
    check(value >= 1, "budget", "select", "a count >= 1 or a fraction of the pool ('1%', '0.01') giving >= 1 sample",
          budget)
    return value


RULES = {
    "store": Rule(str, lambda v: isinstance(v, (str, EmbeddingStore)), "a store URI or an EmbeddingStore"),
    "budget": parsed(lambda v: resolve_budget(v, 10 ** 15), "a count >= 1 or a fraction of the pool ('1%', '0.01')",
                     int | float | str),
    "output": optional(TEXT),
    "method": parsed(get_selector, "one of " + ", ".join(list_selectors()), choices=list_selectors),
    "num_workers": integer(1), "use_gpu": BOOL, "precision": optional(one_of(*PRECISIONS)), "seed": integer(),
    "checkpoint_every": integer(0),
    "partitions": parsed(parse_partitions, "auto, off or a number of cells >= 2", int | str),
    "exclude": IDS, "dedup": optional(number(0, strict=True, maximum=1)), "dedup_keep": one_of("first", "central"),
    "balance_by": optional(TEXT),
    "quotas": parsed(parse_quotas, "uniform, proportional or {value: share} with shares summing to 1",
                      str | dict[str, float]),
    "drop_outliers": optional(number(0, strict=True, maximum=1)), "resume": BOOL, "overwrite": BOOL}


def _summary(sel, values: dict) -> str:
    info = sel.info
    return (f"{values['output']}: {len(sel)} of {info['pool_size']} selected by {values['method']} in "
            f"{info['seconds_total']} s; coverage {info['coverage']:.4f} (random: {info['coverage_random']:.4f})")


def method_params() -> dict:
    """Every registered selector's parameters, each once (its help names the methods using it)."""
    return merged_params({name: get_selector(name).params for name in list_selectors()})


@stage(RULES, output=KIND, flags={"output": ("-o",)},
       command=Command("select", arguments=("store",), required=("output",), summary=_summary, options=method_params,
                       example="activeft select stores/pool --budget 1% --output sel/activeft --num-workers 8 "
                               "--use-gpu"),
       section=Section("select", fixed=("store", "output", "resume", "overwrite"),
                       extra={"output": (str, "{output}/selection"), "params": (dict[str, Any], {})},
                       methods=get_selector))
def select(store, budget, *, output: str | None = None, method: str = "kmeans", num_workers: int = 1,
           use_gpu: bool = False, precision: str | None = None, seed: int = 0, exclude=None, partitions="auto",
           dedup: float | None = None, dedup_keep: str = "central", balance_by: str | None = None,
           quotas="uniform", drop_outliers: float | None = None, resume: bool = False,
           overwrite: bool = False, checkpoint_every: int = 25, _fail_at: int | None = None, **params) -> Selection:
    """Select ``budget`` samples of an embedding store to label.

    Parameters
    ----------
    store : str or EmbeddingStore
        The embedding store (from ``activeft embed`` or ``import-embeddings``).
    budget : int or str
        A count, or a fraction of the pool: ``"1%"``, ``"0.01"`` or ``0.01``.
    output : str, optional
        Directory or prefix where ``selection.parquet``, ``selection.csv`` and ``selection.json`` are
        written. In Python it may be None: the selection is returned, nothing is written.
    method : str, default="kmeans"
        The selection method; its own parameters (``iterations``, ``temperature``, ...) follow.
        The default never loses to k-means, which MaxHerding (``herding``, the default before) did
        at 2 and 6 picks per class on a validation split of the pool (``benchmarks/RESULTS.md``);
        ``activeft`` is the paper's method.
        In Python: one of :func:`list_selectors`, whose parameters (``get_selector(method).params``)
        are further keyword arguments.
    num_workers : int, default=1
        1 runs in this process; more run on a Ray Train worker group, each holding a slice of the
        rows. The same seed gives the same selection for any number of workers.
    use_gpu : bool
        Run on GPUs (nccl between workers).
    precision : {"fp32", "tf32", "bf16"}, optional
        Precision of the candidate products of every nearest-row search (default: tf32 on GPU,
        fp32 on CPU). Near ties are re-scored exactly, so every precision selects the same rows;
        ``selection.json`` records the one used.
    seed : int, default=0
        Random seed (initialisation, mini-batches, the random baseline).
    exclude : str or list of str, optional
        A ``.csv`` or ``.parquet`` table of the ids already labeled (an ``id`` column): never
        selected; ActiveFT keeps them as fixed centroids the new ones stay diverse from. In Python
        also a list of ids.
    partitions : "auto", "off" or int, default="auto"
        Hierarchical selection (:mod:`activeft.select.cells`): cut the pool into this many k-means
        cells, split the budget over them by their rows and run the method inside each cell (cells in
        parallel as Ray tasks, at most ``num_workers`` at a time; a resumed run redoes only unfinished
        cells). The cost then grows with the pool, not with the pool times the budget, but no pick
        sees across a cell border. ``auto``: cells of ~250,000 rows above 1,000,000 rows, else off;
        where that leaves fewer than 30 picks a cell, a cell a pick (up to 1,024 cells; fewer, larger
        cells for a budget below the cells' count), so the cells are the budget's own clusters.
    dedup : float, optional
        Near-duplicate threshold in (0, 1] (``activeft dedup``; its default is 0.98): of each group of
        rows with cosine similarity >= this only one stays in the pool, a labeled (excluded) one if the
        group has one, so no two selected rows, nor a selected and a labeled row, are that similar. The
        others leave the pool before the method runs (they are not ``exclude``: nothing counts them as
        labeled or covered); ``duplicates.parquet`` lists them and ``selection.json`` counts them.
    dedup_keep : {"first", "central"}, default="central"
        The row a group without a labeled row keeps: its first in the store, or the one nearest its mean.
    balance_by : str, optional
        Quotas (:mod:`activeft.select.quotas`): a column of the store (its labels, or a metadata
        column the manifest passed through) whose groups get exact shares of the budget by ``quotas``;
        the method runs inside each group. Labeled (excluded) rows count toward their group's share.
    quotas : "uniform", "proportional" or dict, default="uniform"
        With ``balance_by``: equal shares, shares as the groups' rows, or ``{value: share}`` (shares
        summing to 1, JSON on the command line: ``'{"rain": 0.5, "sun": 0.5}'``; groups not named get
        none). A group with fewer free rows than its share gives them all; the rest goes to the others.
    drop_outliers : float, optional
        Never select the rows whose density (mean cosine similarity to their 10 nearest rows, as
        ``activeft scores``) is in this lowest fraction of the pool; ``outliers.parquet`` lists them.
    resume : bool
        Continue a stopped run in ``output`` from its last checkpoint.
    overwrite : bool
        Replace an existing selection in ``output`` (only what a selection run wrote: any other file
        there is refused); the new one is written beside it and swapped in when complete.
    checkpoint_every : int, default=25
        Iterations between checkpoints of the optimiser state (0: never).

    Examples
    --------
    >>> import activeft, numpy as np, tempfile
    >>> d = tempfile.mkdtemp()
    >>> x = np.random.default_rng(0).normal(size=(200, 8)).astype("float32")
    >>> np.save(f"{d}/x.npy", x)
    >>> _ = open(f"{d}/ids.txt", "w").write("\\n".join(f"img{i}" for i in range(200)))
    >>> store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
    >>> sel = activeft.select(store, budget="5%", method="activeft", iterations=50, output=f"{d}/sel")
    >>> len(sel), len(set(sel.ids)), sel.table.column_names[:4]
    (10, 10, ['id', 'rank', 'method', 'centroid'])
    """
    start = time.perf_counter()
    selector = get_selector(method)(seed=seed, **params)
    store = open_store(store)
    output = storage.output_uri(output) if output is not None else None
    exclude_ids = read_ids(exclude, "exclude") if exclude is not None else []
    exclude_rows = np.sort(store.rows_of(exclude_ids, "excluded ids")) if exclude_ids else np.zeros(0, np.int64)
    budget = resolve_budget(budget, len(store))
    available = len(store) - len(exclude_rows)  # (less the duplicates, checked in the job)
    if budget > available:
        raise ParameterError(f"budget {budget} is larger than the pool of {len(store)} rows"
                             + (f" minus {len(exclude_rows)} excluded" if len(exclude_rows) else ""))
    cells = resolve_partitions(partitions, len(store), budget)
    if cells and dedup is not None:
        raise ParameterError("dedup with partitions: a near-duplicate pair can straddle two cells; dedup the store "
                             "first (activeft dedup) or turn partitions off (--partitions off)")
    if balance_by is not None and dedup is not None:
        raise ParameterError("dedup with balance_by: a near-duplicate pair can straddle two groups; dedup the store "
                             "first (activeft dedup)")
    if cells > available:
        raise ParameterError(f"partitions {cells} for a pool of {available} selectable rows: use fewer cells")
    if balance_by is not None:
        check_column(store, balance_by)
    quotas = parse_quotas(quotas)
    config = {**selector.config(), "budget": budget, "store": store.uri, "excluded": len(exclude_rows),
              **({"partitions": cells} if cells else {}),
              "num_workers": num_workers, **({"dedup": dedup, "dedup_keep": dedup_keep} if dedup else {}),
              **({"balance_by": balance_by, "quotas": quotas} if balance_by is not None else {}),
              **({"drop_outliers": drop_outliers} if drop_outliers else {})}
    import torch

    with protocol.writing(output, KIND, config, resume=resume, overwrite=overwrite) as out:
        if out.finished:
            return read_selection(output)  # resumed a run that had finished
        work = out.join("_work", "select") if output else None
        dropped, outliers = np.zeros(0, np.int64), None
        if drop_outliers:
            outliers = run(functools.partial(_outliers_job, drop_outliers, seed), store, num_workers=num_workers,
                           use_gpu=use_gpu, precision=precision)
            dropped = np.setdiff1d(np.asarray(outliers["rows"], np.int64), exclude_rows)  # a labeled one stays labeled
            if budget > available - len(dropped):
                raise ParameterError(f"budget {budget} is larger than the {available - len(dropped)} selectable rows "
                                     f"left by drop_outliers {drop_outliers}")
        groups = shares = None
        if balance_by is not None:
            values, counts = column_groups(store, balance_by, exclude_rows, dropped, num_workers)
            budgets, shares = group_budgets(values, counts, quotas, budget)
            groups = (balance_by, values, budgets)
        if cells or groups:
            result = select_in_cells(selector, store, budget, exclude_rows, cells, dropped=dropped,
                                     groups=groups, measured=measured_rows(len(store)).numpy(),
                                     num_workers=num_workers, use_gpu=use_gpu, work=work, resume=resume,
                                     precision=precision)
            random_rows = sample_rows(len(store), budget, generator(seed + 1), torch.from_numpy(exclude_rows))
            result["info"].update(coverage_by_shard(store, result["rows"], random_rows.numpy(),
                                                    queries=result.pop("measured"), num_workers=num_workers,
                                                    use_gpu=use_gpu, precision=precision))
        else:
            dedup_args = None if dedup is None else (dedup, dedup_keep, seed)
            job = functools.partial(_select_job, selector, budget, torch.from_numpy(exclude_rows), dedup_args,
                                    torch.from_numpy(dropped))
            result = run(job, store, num_workers=num_workers, use_gpu=use_gpu, work=work, resume=resume,
                         checkpoint_every=checkpoint_every, fail_at=_fail_at, precision=precision)
        if "error" in result:
            raise ParameterError(result["error"])
        duplicates = None
        if dedup is not None:
            duplicates = duplicates_table(store, result.pop("duplicates"))
            count(result["info"]["dedup"], "select")
        rows = np.asarray(result["rows"], dtype=np.int64)
        table = store.take(rows, [c for c in ("id", "uri") if c in store.columns])
        table = table.append_column("rank", pa.array(np.arange(len(rows), dtype=np.int32)))
        table = table.append_column("method", pa.array([method] * len(rows), pa.string()))
        for name, values in result["columns"].items():
            table = table.append_column(name, pa.array(values))
        if groups and balance_by not in table.column_names:
            table = table.append_column(balance_by, store.take(rows, [balance_by]).column(balance_by))
        info = {**protocol.header(), "config": config, "budget": budget, "pool_size": len(store),
                "excluded": len(exclude_rows), "store": {"uri": store.uri, "model": store.model, "dim": store.dim},
                **result["info"],
                **({"balance": {"by": balance_by, "rule": quotas, "groups": shares}} if groups else {}),
                **({"outliers": {"fraction": drop_outliers, "k": DENSITY_K, "dropped": len(dropped)}}
                   if outliers else {}),
                "seconds_total": round(time.perf_counter() - start, 3)}
        selection = Selection(table.column("id").to_pylist(), table, info, output)
        if output:
            if duplicates is not None:
                storage.write_parquet(out.join(DUPLICATES), duplicates)
            if outliers is not None:
                at = np.searchsorted(outliers["rows"], dropped)
                storage.write_parquet(out.join(OUTLIERS), pa.table({
                    "id": store.take(dropped, ["id"]).column("id"),
                    "density": pa.array(np.asarray(outliers["density"])[at], pa.float32())}))
            _write(out, selection)
    log.info("select: %s chose %d of %d in %.1f s (coverage %.4f vs random %.4f)%s", method, budget, len(store),
             info["seconds_total"], info["coverage"], info["coverage_random"], f" -> {output}" if output else "")
    return selection


def _select_job(selector: Selector, budget: int, exclude, dedup, outliers, pool, comm, checkpoints) -> dict:
    """Runs on every worker: the near-duplicates (``dedup``: threshold, keep rule, seed) and the ``outliers``
    leave the pool, fit, then the coverage of the selection and of a random one (over the whole pool)."""
    import torch

    whole, found, dropped = pool, None, outliers
    if dedup is not None:
        found = dedup_job(dedup[0], dedup[1], exclude, dedup[2], pool, comm, checkpoints)
        if "error" in found:
            return found
        rows = torch.tensor(found["rows"], dtype=torch.long)
        dropped = torch.unique(torch.cat([outliers, rows[~torch.isin(rows, exclude)]]))  # labeled rows stay
    if len(dropped):
        pool, exclude = without(pool, dropped), renumber(exclude, dropped)
    if budget > pool.size - len(exclude):  # only the near-duplicates can do this: the driver checked the rest
        return {"error": f"budget {budget} is larger than the pool of {whole.size} rows less "
                         f"{len(dropped) - len(outliers)} near-duplicates (dedup {dedup[0]})"
                         + (f", {len(outliers)} outliers" if len(outliers) else "")
                         + (f" and {len(exclude)} excluded" if len(exclude) else "")}
    t0 = time.perf_counter()
    result = selector.fit(pool, comm, budget, exclude, checkpoints)
    seconds = time.perf_counter() - t0
    rows = np.asarray(original(torch.as_tensor(result.rows, dtype=torch.long), dropped), dtype=np.int64)
    if len(rows) != budget or len(set(rows.tolist())) != budget:
        raise RuntimeError(f"{selector.name} returned {len(set(rows.tolist()))} distinct rows, not {budget}")
    random_rows = original(sample_rows(pool.size, budget, generator(selector.seed + 1), exclude), dropped)
    pool = whole
    return {"rows": rows.tolist(),
            "columns": {k: np.asarray(v).tolist() for k, v in result.columns.items()},
            "info": {**result.info, "seconds_select": round(seconds, 3),
                     "precision": resolve_precision(pool.precision, pool.device),
                     **coverage_job(rows, random_rows, pool, comm, checkpoints),
                     **({} if found is None else {"dedup": {**found["info"],
                                                            "dropped": len(dropped) - len(outliers)}})},
            **({} if found is None else {"duplicates": found})}


def _outliers_job(fraction: float, seed: int, pool, comm, checkpoints) -> dict:
    """The rows of the ``fraction`` lowest density (:func:`activeft.engine.lowest`) and their density."""
    _, density = neighbourhood(pool, comm, DENSITY_K, seed=seed)
    rows = lowest(density, fraction)
    return {"rows": rows.tolist(), "density": density[rows].tolist()}


def _write(out: protocol.Output, selection: Selection) -> None:
    storage.write_parquet(out.join("selection.parquet"), selection.table)
    storage.write_csv(out.join("selection.csv"),
                      selection.table.select([c for c in ("id", "uri") if c in selection.table.column_names]))
    out.commit(selection.info)  # files.json, then selection.json (last), then the swap on --overwrite


def read_selection(uri: str) -> Selection:
    """Open a finished selection directory (as written by :func:`select`).

    Examples
    --------
    >>> import activeft
    >>> activeft.read_selection("no/such/dir")
    Traceback (most recent call last):
    ...
    activeft.errors.StoreError: no/such/dir is not a finished selection (no selection.json); run `activeft select` first
    """
    if not storage.exists(storage.join(uri, SELECTION)):
        raise StoreError(f"{uri} is not a finished selection (no {SELECTION}); run `activeft select` first")
    table = storage.read_parquet(storage.join(uri, "selection.parquet"))
    return Selection(table.column("id").to_pylist(), table, storage.read_json(storage.join(uri, SELECTION)), uri)
