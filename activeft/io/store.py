"""The embedding store: Parquet shards of L2-normalised embeddings plus a manifest.

Layout (a directory or object-store prefix)::

    part-00000.parquet   id (string), uri (string), embedding (fixed_size_list<float32|float16>[D]),
                         optional label and pass-through columns
    _errors.parquet      id, uri, error: images that could not be read or decoded
    _manifest.json       written last; a store without it is incomplete
    _work/               bookkeeping of an unfinished or resumable embed run

Readers get float32, whatever the storage dtype, unless they ask for the stored float16. Rows
have a global order (manifest shard order, then row order), which is what "row i" means to every
pool algorithm.
"""

from __future__ import annotations

import bisect
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import StoreError
from . import storage
from .protocol import Kind, header

MANIFEST = "_manifest.json"
ERRORS = "_errors.parquet"
WORK = "_work"
FORMAT = "activeft-embedding-store/1"
DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
# what embed and import-embeddings write
KIND = Kind("embedding store", MANIFEST, r"part-\d{5,}\.parquet|_errors\.parquet|_manifest\.json")


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def embedding_array(x: np.ndarray, dtype: str = "float32") -> pa.FixedSizeListArray:
    """``(N, D)`` numpy -> Arrow ``fixed_size_list<dtype>[D]``."""
    x = np.ascontiguousarray(x, dtype=np.dtype(dtype))
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=DTYPES[dtype]), x.shape[1])


def embedding_matrix(column, dtype: str = "float32") -> np.ndarray:
    """Arrow ``fixed_size_list`` (or list) column -> ``(N, D)`` numpy of ``dtype``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    n = len(column)
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if n and (lengths != lengths[0]).any():
            raise StoreError(f"embeddings have mixed lengths {sorted(set(lengths.tolist()))[:5]}")
        dim = int(lengths[0]) if n else 0
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.array(values, dtype=np.dtype(dtype)).reshape(n, dim)  # a writable copy, not a view of Arrow memory


class EmbeddingStore:
    """A complete embedding store, opened by its manifest.

    Examples
    --------
    >>> import activeft, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> np.save(f"{d}/x.npy", np.eye(3, dtype="float32"))
    >>> _ = open(f"{d}/ids.txt", "w").write("a\\nb\\nc\\n")
    >>> store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
    >>> len(store), store.dim, store.ids()[:2]
    (3, 3, ['a', 'b'])
    """

    def __init__(self, uri: str):
        self.uri = storage.absolute(uri)
        if not storage.exists(storage.join(self.uri, MANIFEST)):
            if storage.is_file(self.uri):
                raise StoreError(f"embedding store {self.uri} is a file, not a store directory; give the directory "
                                 "`activeft embed` (or `activeft import-embeddings`) wrote")
            what = "does not exist" if not storage.exists(self.uri) else "is incomplete (no _manifest.json)"
            raise StoreError(f"embedding store {self.uri} {what}; run `activeft embed` "
                             "(or `activeft import-embeddings`), or finish it with --resume")
        self.manifest = storage.read_json(storage.join(self.uri, MANIFEST))
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{self.uri}/_manifest.json is not an activeft store manifest "
                             f"(format {self.manifest.get('format')!r}, expected {FORMAT!r})")
        self.shards = [s for s in self.manifest["shards"] if s["rows"] > 0]
        self._offsets = np.cumsum([0] + [s["rows"] for s in self.shards]).tolist()

    def __len__(self) -> int:
        return self._offsets[-1]

    def __repr__(self) -> str:
        return f"EmbeddingStore({self.uri!r}, rows={len(self)}, dim={self.dim}, model={self.model!r})"

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def model(self) -> str | None:
        return self.manifest.get("backbone", {}).get("model")

    @property
    def dtype(self) -> str:
        """Storage dtype of the embeddings: ``float32`` or ``float16``."""
        return self.manifest.get("dtype", "float32")

    @property
    def columns(self) -> list[str]:
        return list(self.manifest.get("columns", ["id", "embedding"]))

    @property
    def has_labels(self) -> bool:
        return "label" in self.columns

    @property
    def source(self) -> str:
        """What the store was made from: the embed stage's image source, or the imported table."""
        return self.manifest["source"]

    @property
    def backbone(self) -> dict:
        """The backbone that embedded the store (``model``, ``pretrained``, ``image_size``, ``weights``);
        ``model`` is None for imported embeddings."""
        return self.manifest.get("backbone", {})

    @property
    def embed_settings(self) -> dict | None:
        """The :func:`activeft.embed` arguments that made the store, but its source and output, so that
        ``embed(store.source, output, **store.embed_settings)`` embeds as it did: backbone, dtype,
        partition size and, when recorded (manifest ``embed``), the last run's ``batch_size``,
        ``num_actors`` and ``gpus_per_actor``. None for imported embeddings."""
        if self.model is None:
            return None
        b = self.backbone
        return {"model": b["model"], "pretrained": b["pretrained"], "image_size": b.get("image_size"),
                "dtype": self.dtype, "partition_size": self.manifest["partition_size"],
                **self.manifest.get("embed", {})}

    @property
    def shard_bounds(self) -> list[tuple[int, int]]:
        """Each shard's global rows ``[start, stop)``."""
        return list(zip(self._offsets[:-1], self._offsets[1:], strict=True))

    def read(self, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows ``[start, stop)`` in global order, reading only the shards they overlap."""
        stop = len(self) if stop is None else min(stop, len(self))
        columns = columns or self.columns
        parts = []
        first = max(bisect.bisect_right(self._offsets, start) - 1, 0)
        for i in range(first, len(self.shards)):
            lo, hi = self._offsets[i], self._offsets[i + 1]
            if lo >= stop:
                break
            table = self._read_shard(i, columns)
            parts.append(table.slice(max(start - lo, 0), min(stop, hi) - max(start, lo)))
        if not parts:
            return self._read_shard(0, columns).slice(0, 0) if self.shards else pa.table({})
        return pa.concat_tables(parts)

    def _read_shard(self, i: int, columns: list[str]) -> pa.Table:
        shard = self.shards[i]
        uri = storage.join(self.uri, shard["name"])
        try:
            table = storage.read_parquet(uri, columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise StoreError(f"cannot read shard {uri}: {storage._first_line(e)}") from e
        if table.num_rows != shard["rows"]:
            raise StoreError(f"shard {uri} has {table.num_rows} rows, the manifest says {shard['rows']}")
        if "embedding" in columns:
            t = table.schema.field("embedding").type
            if not pa.types.is_fixed_size_list(t) or t.list_size != self.dim:
                raise StoreError(f"shard {uri} has embedding type {t}, the store's dim is {self.dim}")
        return table

    def embeddings(self, start: int = 0, stop: int | None = None, dtype: str = "float32") -> np.ndarray:
        """``(rows, dim)`` of rows ``start:stop`` as ``dtype`` (``float32``, or the store's ``float16``
        without conversion); NaN or inf is an error naming the first bad row."""
        return self._finite(self.read(start, stop, ["id", "embedding"]), dtype)

    def embeddings_at(self, rows) -> np.ndarray:
        """float32 ``(len(rows), dim)`` of global ``rows``, in that order; checked as :meth:`embeddings`."""
        return self._finite(self.take(rows, ["id", "embedding"]))

    def _finite(self, table: pa.Table, dtype: str = "float32") -> np.ndarray:
        x = embedding_matrix(table.column("embedding"), dtype)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise StoreError(f"store {self.uri} has {int(bad.sum())} embeddings with NaN/inf "
                             f"(first: id {table.column('id')[i].as_py()!r})")
        return x

    def take(self, rows, columns: list[str] | None = None) -> pa.Table:
        """Global ``rows`` (in that order), reading only the shards that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise StoreError(f"row {int(rows.max())} out of range for store {self.uri} ({len(self)} rows)")
        columns = columns or self.columns
        order = np.argsort(rows, kind="stable")
        shard_of = np.searchsorted(self._offsets, rows[order], side="right") - 1
        parts = []
        for i in np.unique(shard_of):
            local = rows[order][shard_of == i] - self._offsets[i]
            parts.append(self._read_shard(int(i), columns).take(pa.array(local)))
        if not parts:
            return self.read(0, 0, columns)
        return pa.concat_tables(parts).take(pa.array(np.argsort(order, kind="stable")))

    def ids(self, start: int = 0, stop: int | None = None) -> list[str]:
        return self.read(start, stop, ["id"]).column("id").to_pylist()

    @cached_property
    def id_index(self) -> dict[str, int]:
        """id -> global row. Holds every id in memory: for lookups of small id sets."""
        return {k: i for i, k in enumerate(self.ids())}

    def rows_of(self, ids, what: str = "ids") -> np.ndarray:
        """Global rows of ``ids``; ids not in the store are an error that shows a few."""
        index = self.id_index
        missing = [i for i in ids if i not in index]
        if missing:
            raise StoreError(f"{len(missing)} {what} are not in the store {self.uri} "
                             f"(e.g. {', '.join(map(repr, missing[:3]))})")
        return np.array([index[i] for i in ids], dtype=np.int64)

    def worker_range(self, rank: int, world_size: int) -> tuple[int, int]:
        """The contiguous global rows worker ``rank`` of ``world_size`` holds.

        On large pools the boundaries fall on multiples of 4096 rows, the query block of faiss's
        exact search, so each row's scores are computed in the same block whatever the number
        of workers (and 1 and W workers agree bit for bit).
        """
        n = len(self)
        align = 4096 if n >= world_size * 4096 * 4 else 1
        bound = lambda r: n if r == world_size else min(n, round(r * n / world_size / align) * align)  # noqa: E731
        return bound(rank), bound(rank + 1)


def shard_rows(uri: str) -> int:
    """Row count of a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    fs, path = storage.resolve(uri)
    return pq.read_metadata(path, filesystem=fs).num_rows


def write_manifest(uri: str, *, shards: list[str], dim: int, dtype: str, columns: list[str],
                   source: str, errors: int, **extra) -> EmbeddingStore:
    """Write ``_manifest.json`` (the store's completion marker) and open the store."""
    entries = [{"name": s, "rows": shard_rows(storage.join(uri, s))} for s in shards]
    manifest = {"format": FORMAT, **header(), "source": str(source),
                "dim": int(dim), "dtype": dtype, "normalized": True, "columns": columns,
                "rows": sum(e["rows"] for e in entries), "errors": int(errors), **extra, "shards": entries}
    storage.write_json(storage.join(uri, MANIFEST), manifest)  # last: the store's completion marker
    return EmbeddingStore(uri)


def open_store(store) -> EmbeddingStore:
    """``store`` itself if it is an :class:`EmbeddingStore`, else the store at that URI."""
    return store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
