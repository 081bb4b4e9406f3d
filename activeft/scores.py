"""The scores stage: per-row uniqueness, density, near-duplicate group and outlier flag of a store.

As FiftyOne Brain's uniqueness and representativeness, on the sharded engine
(:mod:`activeft.engine.density`, :mod:`activeft.engine.dedup`): for every row, ``uniqueness`` (the
distance to its ``k``-th nearest row), ``density`` (the mean cosine similarity to its ``k`` nearest
rows), ``group_size`` and ``duplicate_of`` (its near-duplicate group at ``dedup``, as ``activeft
dedup`` with ``keep=first``) and ``outlier`` (its density in the lowest ``outliers`` fraction: the rows
``select --drop-outliers`` would drop, with the default ``k``). Writes ``scores.parquet``, a
``report.html`` (histograms; thumbnails of the most unique rows, the largest duplicate groups and the
outliers) and, last, ``scores.json``.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import pyarrow as pa

from .dedup import THRESHOLD, dedup_job
from .engine import DENSITY_K, lowest, neighbourhood
from .errors import ParameterError
from .io import protocol, storage
from .io.store import open_store
from .params import BOOL, STORE, TEXT, integer, number, optional
from .report import REPORT, scores_page
from .runtime.runner import run
from .stages import Command, Section, stage

log = logging.getLogger(__name__)
SCORES = "scores.json"
KIND = protocol.Kind("scores", SCORES, r"scores\.(parquet|json)|report\.html")


def _summary(table, values: dict) -> str:
    dups = int(table.filter(table.column("group_size").to_numpy() > 1).num_rows)
    return (f"{values['output']}: scores of {table.num_rows} rows; {dups} in near-duplicate groups, "
            f"{int(np.sum(table.column('outlier').to_numpy(zero_copy_only=False)))} outliers")


@stage({"store": STORE, "output": optional(TEXT), "k": integer(1), "outliers": number(0, maximum=1),
        "dedup": number(0, strict=True, maximum=1), "num_workers": integer(1), "use_gpu": BOOL, "seed": integer(),
        "overwrite": BOOL},
       output=KIND, flags={"output": ("-o",)},
       command=Command("scores", arguments=("store",), required=("output",), summary=_summary,
                       example="activeft scores stores/pool --output scores/ --k 10 --outliers 0.01"),
       section=Section("scores", fixed=("store", "output", "overwrite"), extra={"output": (str, "{output}/scores")}))
def scores(store, *, output: str | None = None, k: int = DENSITY_K, outliers: float = 0.01, dedup: float = THRESHOLD,
           num_workers: int = 1, use_gpu: bool = False, seed: int = 0, overwrite: bool = False) -> pa.Table:
    """Score every row of an embedding store: uniqueness, density, near-duplicate group, outlier flag.

    Parameters
    ----------
    store : str or EmbeddingStore
        The embedding store.
    output : str, optional
        Directory where ``scores.parquet``, ``report.html`` and ``scores.json`` are written. In Python it
        may be None: the table is returned, nothing is written.
    k : int, default=10
        Neighbours: uniqueness is the distance to the k-th nearest row, density the mean cosine similarity
        to the k nearest (exact up to 65,536 rows, an inverted file beyond).
    outliers : float, default=0.01
        The fraction of rows of lowest density flagged as outliers (``select --drop-outliers``).
    dedup : float, default=0.98
        Near-duplicate threshold (cosine similarity, as ``activeft dedup``).
    num_workers : int, default=1
        Ray Train workers (1: in this process); the same scores for any number.
    use_gpu : bool
        Run on GPUs.
    seed : int, default=0
        Seed of the k-means cells of pools above 65,536 rows.
    overwrite : bool
        Replace existing scores in ``output``.

    Returns
    -------
    pyarrow.Table
        ``id``, ``uniqueness``, ``density``, ``group_size`` (rows in its near-duplicate group; 1: none),
        ``duplicate_of`` (the id its group keeps, for the others; else null) and ``outlier``, one row per row.

    Examples
    --------
    >>> import activeft, numpy as np, tempfile
    >>> d = tempfile.mkdtemp()
    >>> x = np.random.default_rng(0).normal(size=(100, 8)).astype("float32")
    >>> x[99] = x[0] * 1.001  # a near-copy
    >>> np.save(f"{d}/x.npy", x)
    >>> _ = open(f"{d}/ids.txt", "w").write("\\n".join(f"i{j}" for j in range(100)))
    >>> store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
    >>> table = activeft.scores(store, k=5, outliers=0.05)
    >>> table["duplicate_of"][99].as_py(), table["group_size"][0].as_py(), sum(table["outlier"].to_pylist())
    ('i0', 2, 5)
    """
    start = time.perf_counter()
    store = open_store(store)
    if len(store) < 2:
        raise ParameterError(f"scores need a store of at least 2 rows; {store.uri} has {len(store)}")
    output = storage.output_uri(output) if output is not None else None
    config = {"k": k, "outliers": outliers, "dedup": dedup, "store": store.uri}
    with protocol.writing(output, KIND, config, resume=None, overwrite=overwrite) as out:
        found = run(functools.partial(_scores_job, k, outliers, dedup, seed), store, num_workers=num_workers,
                    use_gpu=use_gpu)
        if "error" in found:
            raise ParameterError(found["error"])
        table = _table(store, found)
        info = {**protocol.header(), "config": config, "rows": len(store), **found["info"],
                "outliers": int(len(found["outliers"])), "seconds": round(time.perf_counter() - start, 3)}
        if output is not None:
            storage.write_parquet(out.join("scores.parquet"), table)
            storage.write_bytes(out.join(REPORT), scores_page(info, table, store).encode())
            out.commit(info)  # files.json, then scores.json (last), then the swap on --overwrite
    log.info("scores: %d rows in %.1f s: %d in near-duplicate groups, %d outliers", len(store), info["seconds"],
             info["rows_in_groups"], info["outliers"])
    return table


def _scores_job(k: int, outliers: float, threshold: float, seed: int, pool, comm, checkpoints) -> dict:
    """Every rank: the whole pool's uniqueness and density, the outliers and the near-duplicate groups."""
    uniqueness, density = neighbourhood(pool, comm, k, seed=seed)
    found = dedup_job(threshold, "first", None, seed, pool, comm, checkpoints)
    if "error" in found:
        return found
    return {"uniqueness": uniqueness.tolist(), "density": density.tolist(),
            "outliers": lowest(density, outliers).tolist(), "duplicates": found["rows"], "kept": found["kept"],
            "info": {**found["info"], "k": min(k, pool.size - 1)}}


def _table(store, found: dict) -> pa.Table:
    """The scores table of a :func:`_scores_job` result: each row's group is named by its kept row."""
    n = len(store)
    ids = store.read(columns=["id"]).column("id").combine_chunks()
    head = np.arange(n)
    head[np.asarray(found["duplicates"], np.int64)] = found["kept"]
    size = (1 + np.bincount(head[head != np.arange(n)], minlength=n)[head]).astype(np.int32)
    of = np.where(head != np.arange(n), head, -1)
    flag = np.zeros(n, bool)
    flag[found["outliers"]] = True
    return pa.table({"id": ids, "uniqueness": pa.array(found["uniqueness"], pa.float32()),
                     "density": pa.array(found["density"], pa.float32()), "group_size": pa.array(size),
                     "duplicate_of": ids.take(pa.array(of, mask=of < 0)), "outlier": pa.array(flag)})
