"""Bring your own embeddings: an existing table -> the embedding-store contract.

Reads a Parquet table (an id column and a list / fixed-size-list embedding column; ``label``
and any other columns pass through) or a ``.npy`` matrix with a one-column ids file
(``.txt`` one id per line, ``.csv`` or ``.parquet``). Parquet is streamed by record batch,
so the table never has to fit in memory; only the ids do (for the duplicate check).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import SourceError
from ..io import protocol, storage
from ..io.store import (
    DTYPES,
    ERRORS,
    KIND,
    EmbeddingStore,
    embedding_array,
    embedding_matrix,
    shard_name,
    write_manifest,
)
from ..params import BOOL, TEXT, integer, one_of, optional
from ..stages import Command, stage

log = logging.getLogger(__name__)


def _summary(store, values: dict) -> str:
    return f"{store.uri}: {len(store)} rows, dim {store.dim}"


@stage({
    "table": TEXT, "output": TEXT, "ids": optional(TEXT), "id_column": TEXT, "embedding_column": TEXT,
    "normalize": BOOL, "dtype": one_of(*DTYPES), "partition_size": integer(1), "overwrite": BOOL},
       flags={"output": ("-o",)}, output=KIND,
       command=Command("import-embeddings", arguments=("table",), summary=_summary,
                       example="activeft import-embeddings clip.parquet --output stores/clip --id-column key "
                               "--embedding-column vec"))
def import_embeddings(table: str, output: str, *, ids: str | None = None, id_column: str = "id",
                      embedding_column: str = "embedding", normalize: bool = True, dtype: str = "float32",
                      partition_size: int = 100_000, overwrite: bool = False) -> EmbeddingStore:
    """Write the store contract at ``output`` from an existing embeddings table.

    Parameters
    ----------
    table : str
        A ``.parquet`` table with an id and an embedding (list) column, or a ``.npy`` matrix of
        shape ``(N, D)``.
    output : str
        Embedding store to write.
    ids : str, optional
        For ``.npy``: the ids file (``.txt`` one per line, or a one-column ``.csv``/``.parquet``).
    id_column : str, default="id"
        Id column of the Parquet table.
    embedding_column : str, default="embedding"
        Embedding column of the Parquet table.
    normalize : bool, default=True
        L2-normalise every vector (selection assumes unit vectors). With ``False`` the vectors
        must already have unit norm.
    dtype : {"float32", "float16"}
        Storage dtype of the embeddings.
    partition_size : int, default=100000
        Rows per shard.
    overwrite : bool
        Replace an existing store in ``output`` (only what a store run wrote: any other file
        there is refused); the new one is written beside it and swapped in when complete.

    Examples
    --------
    >>> import activeft, numpy as np, tempfile
    >>> d = tempfile.mkdtemp()
    >>> np.save(f"{d}/x.npy", np.array([[3.0, 4.0], [1.0, 0.0]], "float32"))
    >>> _ = open(f"{d}/ids.txt", "w").write("cat.jpg\\ndog.jpg\\n")
    >>> store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
    >>> store.embeddings()
    array([[0.6, 0.8],
           [1. , 0. ]], dtype=float32)
    """
    output = storage.output_uri(output)
    if not storage.exists(table):
        raise SourceError(f"table {table} does not exist")
    batches = _npy_batches(table, ids, partition_size) if str(table).endswith(".npy") else \
        _parquet_batches(table, id_column, embedding_column, partition_size)
    settings = {"imported_from": str(table), "dtype": dtype, "normalize": normalize}
    # on --overwrite the new store is written beside the old one, which bad input found late never touches
    with protocol.writing(output, KIND, settings, resume=None, overwrite=overwrite) as out:
        shards, dim, columns = [], None, None
        for i, (batch, x) in enumerate(_checked(table, batches, normalize)):
            dim = x.shape[1]
            if normalize:
                x = x / np.linalg.norm(x, axis=1, keepdims=True)
            batch = batch.set_column(batch.column_names.index("embedding"), "embedding", embedding_array(x, dtype))
            columns = batch.column_names
            storage.write_parquet(out.join(shard_name(i)), batch)
            shards.append(shard_name(i))
        if not shards:
            raise SourceError(f"table {table} has no rows")
        storage.write_parquet(out.join(ERRORS), pa.table({"id": pa.array([], pa.string()),
                                                          "error": pa.array([], pa.string())}))
        write_manifest(out.dir, shards=shards, dim=dim, dtype=dtype, columns=columns, source=table, errors=0,
                       backbone={"model": None, "imported_from": str(table)})
        out.commit()  # files.json beside the manifest, then the swap on --overwrite
    store = EmbeddingStore(output)
    log.info("import-embeddings: %s: %d rows, dim %d, %d shards", output, len(store), dim, len(shards))
    return store


def _checked(table, batches, normalize):
    """``(batch, embeddings)`` of each batch, after checking dims, values and unique ids."""
    seen: set[str] = set()
    dim = None
    for batch in batches:
        x = embedding_matrix(batch.column("embedding"))
        dim = dim or x.shape[1]
        if x.shape[1] != dim:
            raise SourceError(f"{table}: embeddings have mixed dims {dim} and {x.shape[1]}")
        _validate(table, x, batch.column("id").to_pylist(), seen, normalize)
        yield batch, x


def _validate(table, x, ids, seen, normalize) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        first = ids[int(np.argmax(bad))]
        raise SourceError(f"{table}: {int(bad.sum())} embeddings contain NaN or inf (first: id {first!r})")
    norms = np.linalg.norm(x, axis=1)
    if normalize and (norms == 0).any():
        raise SourceError(f"{table}: {int((norms == 0).sum())} embeddings are all zeros and cannot be normalised "
                          f"(first: id {ids[int(np.argmax(norms == 0))]!r})")
    off = np.abs(norms - 1)
    if not normalize and (off > 1e-3).any():
        j = int(np.argmax(off))
        raise SourceError(f"{table}: embeddings are not unit-norm (id {ids[j]!r} has norm {norms[j]:.4g}); "
                          "drop --no-normalize")
    counts = Counter(ids)
    dupes = sorted(i for i, c in counts.items() if c > 1 or i in seen)
    if dupes:
        raise SourceError(f"{table}: {len(dupes)} duplicate ids (e.g. {', '.join(map(repr, dupes[:3]))})")
    seen.update(counts)


def _parquet_batches(table, id_column, embedding_column, partition_size):
    fs, path = storage.resolve(table)
    try:
        pf = pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, storage.StorageUnavailable):
            raise
        raise SourceError(f"cannot read {table} as Parquet ({storage._first_line(e)}); import-embeddings reads "
                          "a .parquet table or a .npy matrix") from e
    names = pf.schema_arrow.names
    for col in (id_column, embedding_column):
        if col not in names:
            raise SourceError(f"{table} has no column {col!r} (columns: {', '.join(names)})")
    for batch in pf.iter_batches(batch_size=partition_size):
        t = pa.Table.from_batches([batch])
        t = t.rename_columns(["id" if c == id_column else "embedding" if c == embedding_column else c
                              for c in t.column_names])
        if t.column("id").null_count:
            raise SourceError(f"{table}: {t.column('id').null_count} rows have no id")
        t = t.set_column(t.column_names.index("id"), "id", pc.cast(t.column("id"), pa.string()))
        yield t.select(["id", "embedding"] + [c for c in t.column_names if c not in ("id", "embedding")])


def _npy_batches(table, ids, partition_size):
    import io

    if ids is None:
        raise SourceError(f"{table} is a .npy matrix: pass the ids file with --ids")
    try:
        x = np.load(io.BytesIO(storage.read_bytes(table)))
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, storage.StorageUnavailable):
            raise
        raise SourceError(f"cannot read {table} as a .npy matrix ({storage._first_line(e)})") from e
    if x.ndim != 2:
        raise SourceError(f"{table} has shape {x.shape}; expected (N, D)")
    if str(ids).endswith((".csv", ".parquet")):
        t = storage.read_table(ids)
        if t.num_columns != 1:
            raise SourceError(f"ids file {ids} has {t.num_columns} columns; expected one")
        id_list = [str(v) for v in t.column(0).to_pylist()]
    else:
        id_list = [line.strip() for line in storage.read_bytes(ids).decode().splitlines() if line.strip()]
    if len(id_list) != len(x):
        raise SourceError(f"ids file {ids} has {len(id_list)} ids but {table} has {len(x)} rows")
    for lo in range(0, len(x), partition_size):
        yield pa.table({"id": pa.array(id_list[lo:lo + partition_size], pa.string()),
                        "embedding": embedding_array(x[lo:lo + partition_size].astype(np.float32))})
