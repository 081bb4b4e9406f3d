"""The dedup stage: near-duplicate groups of an embedding store (semantic deduplication).

Rows whose embeddings have cosine similarity ``>= threshold`` are duplicates; the groups are the
connected components of those pairs, each keeping one row by the ``keep`` rule, so any two kept rows
are less similar than the threshold (:mod:`activeft.engine.dedup`: exact over every pair, on the
sharded engine, the same groups for any number of workers). Writes ``duplicates.parquet`` (``id``,
``kept_id``, ``similarity``: each row that is not kept, its group's kept row and their cosine
similarity) and, last, ``dedup.json`` (threshold, keep rule, pairs, groups, duplicates, timings).
``select --dedup T`` runs the same groups inside the selection.

Default threshold 0.98, chosen for precision on planted near-copies of Fashion-MNIST images
(``benchmarks/dedup_quality.py``, the benchmarks' whitened PCA-64 features): 97% of the pairs in a
group are planted ones (99.8% of those with a copy), and re-encoded and colour-shifted copies are
found (84-100%), but flipped, cropped or shifted ones are not: pixel features cannot tell them from
other images, and no threshold reaches 0.99 precision and recall there. A backbone's embeddings
need their own check.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import pyarrow as pa
import torch

from .engine.dedup import duplicate_groups
from .errors import ParameterError
from .io import protocol, storage
from .io.ids import IDS, read_ids
from .io.store import EmbeddingStore, open_store
from .params import BOOL, STORE, TEXT, integer, number, one_of, optional
from .runtime import metrics
from .runtime.runner import run
from .stages import Command, stage

log = logging.getLogger(__name__)
DEDUP = "dedup.json"
DUPLICATES = "duplicates.parquet"
KIND = protocol.Kind("dedup", DEDUP, r"duplicates\.parquet|dedup\.json")
THRESHOLD = 0.98
KEEP = ("first", "central", "labeled")


def _summary(table, values: dict) -> str:
    groups = len(set(table.column("kept_id").to_pylist()))
    return f"{values['output']}: {table.num_rows} near-duplicates in {groups} groups (threshold {values['threshold']})"


@stage({"store": STORE, "threshold": number(0, strict=True, maximum=1), "output": optional(TEXT),
        "keep": one_of(*KEEP), "labeled": IDS, "num_workers": integer(1), "use_gpu": BOOL,
        "seed": integer(), "overwrite": BOOL},
       output=KIND, flags={"output": ("-o",)},
       command=Command("dedup", arguments=("store",), required=("output",), summary=_summary,
                       example="activeft dedup stores/pool --threshold 0.98 --output dedup/ --keep labeled "
                               "--labeled labeled-ids.parquet"))
def dedup(store, *, threshold: float = THRESHOLD, output: str | None = None, keep: str = "first", labeled=None,
          num_workers: int = 1, use_gpu: bool = False, seed: int = 0, overwrite: bool = False) -> pa.Table:
    """Find the near-duplicate groups of an embedding store and the row each keeps.

    Parameters
    ----------
    store : str or EmbeddingStore
        The embedding store (L2-normalised rows: the inner product is the cosine similarity).
    threshold : float, default=0.98
        Rows with cosine similarity >= this, in (0, 1], are duplicates; a group is a connected component
        of those pairs. 0.98: precise on planted near-copies of Fashion-MNIST images (README, Dedup).
    output : str, optional
        Directory where ``duplicates.parquet`` and ``dedup.json`` are written. In Python it may be None:
        the table is returned, nothing is written.
    keep : {"first", "central", "labeled"}, default="first"
        The row each group keeps: ``first`` its first row in the store, ``central`` the row nearest
        its mean, ``labeled`` its first labeled row (``--labeled``), else its first row.
    labeled : str or list of str, optional
        For ``keep=labeled``: a ``.csv`` or ``.parquet`` table of the labeled ids (an ``id`` column,
        as ``select --exclude``). In Python also a list of ids.
    num_workers : int, default=1
        Ray Train workers (1: in this process); the same groups for any number.
    use_gpu : bool
        Run on GPUs.
    seed : int, default=0
        Seed of the k-means cells of pools above 65,536 rows (the groups do not depend on it).
    overwrite : bool
        Replace an existing dedup output in ``output``.

    Returns
    -------
    pyarrow.Table
        ``id``, ``kept_id``, ``similarity``: one row per duplicate that is not kept.

    Examples
    --------
    >>> import activeft, numpy as np, tempfile
    >>> d = tempfile.mkdtemp()
    >>> x = np.random.default_rng(0).normal(size=(100, 8)).astype("float32")
    >>> x[90:] = x[:10] * 1.001  # ten near-copies
    >>> np.save(f"{d}/x.npy", x)
    >>> _ = open(f"{d}/ids.txt", "w").write("\\n".join(f"i{j}" for j in range(100)))
    >>> store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
    >>> dup = activeft.dedup(store, threshold=0.99, output=f"{d}/dedup")
    >>> dup.num_rows, dup.column("id")[0].as_py(), dup.column("kept_id")[0].as_py()
    (10, 'i90', 'i0')
    """
    start = time.perf_counter()
    if (keep == "labeled") != (labeled is not None):
        raise ParameterError("keep='labeled' needs the labeled ids (--labeled), and --labeled is used only by it")
    store = open_store(store)
    labeled_ids = read_ids(labeled, "labeled") if labeled is not None else []
    preferred = np.sort(store.rows_of(labeled_ids, "labeled ids")) if labeled_ids else np.zeros(0, np.int64)
    output = storage.output_uri(output) if output is not None else None
    config = {"threshold": threshold, "keep": keep, "labeled": len(preferred), "store": store.uri}
    with protocol.writing(output, KIND, config, resume=None, overwrite=overwrite) as out:
        job = functools.partial(dedup_job, threshold, "first" if keep == "labeled" else keep,
                                torch.from_numpy(preferred), seed)
        found = run(job, store, num_workers=num_workers, use_gpu=use_gpu)
        if "error" in found:
            raise ParameterError(found["error"])
        table = duplicates_table(store, found)
        count(found["info"], "dedup")
        info = {**protocol.header(), "config": config, **found["info"], "keep": keep,
                "seconds": round(time.perf_counter() - start, 3)}
        if output is not None:
            storage.write_parquet(out.join(DUPLICATES), table)
            out.commit(info)  # files.json, then dedup.json (last), then the swap on --overwrite
    log.info("dedup: %d near-duplicates in %d groups of %d rows at threshold %g in %.1f s", table.num_rows,
             info["groups"], len(store), threshold, info["seconds"])
    return table


def dedup_job(threshold: float, keep: str, preferred, seed: int, pool, comm, checkpoints) -> dict:
    """Every rank: the groups (:func:`~activeft.engine.dedup.duplicate_groups`); a pair count too large
    for memory comes back as ``{"error": ...}`` for the driver to raise."""
    try:
        found = duplicate_groups(pool, comm, threshold, keep=keep, preferred=preferred, seed=seed)
    except ValueError as e:
        return {"error": str(e)}
    return {"rows": found.rows.tolist(), "kept": found.kept.tolist(), "similarity": found.similarity.tolist(),
            "info": found.info}


def count(info: dict, stage: str) -> None:
    """The duplicates and groups on the Ray metrics."""
    metrics.inc("activeft_dedup_duplicates", info["duplicates"], stage=stage)
    metrics.inc("activeft_dedup_groups", info["groups"], stage=stage)


def duplicates_table(store: EmbeddingStore, found: dict) -> pa.Table:
    """``id``, ``kept_id``, ``similarity`` of a :func:`dedup_job` result."""
    ids = lambda rows: store.take(np.asarray(rows, np.int64), ["id"]).column("id").combine_chunks()  # noqa: E731
    return pa.table({"id": ids(found["rows"]), "kept_id": ids(found["kept"]),
                     "similarity": pa.array(found["similarity"], pa.float32())})
