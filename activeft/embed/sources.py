"""Image sources: a directory / object-store prefix, or a manifest table.

Both become one Arrow table with ``id`` and ``uri`` (strings), an optional ``label`` and any
pass-through columns, sorted by ``id``. A prefix is listed recursively and only image
extensions are taken; the id is the key relative to the prefix. A manifest (``.csv`` or
``.parquet``) needs a ``uri`` column; ``id`` defaults to the uri, relative uris are resolved
against the manifest's own directory, and ``file://`` URIs become local paths. For very large
pools a manifest is the recommended source: listing billions of keys is slow.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SourceError
from ..io import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TABLE_EXTENSIONS = (".csv", ".parquet")


def read_source(source: str) -> pa.Table:
    """The source as a table ``id, uri[, label, ...]`` sorted by id, validated."""
    source = storage.absolute(source)
    if not storage.exists(source):
        raise SourceError(f"source {source} does not exist")
    if source.lower().endswith(TABLE_EXTENSIONS) and storage.is_file(source):
        table = _read_manifest(source)
    else:
        table = _list_prefix(source)
    if table.num_rows == 0:
        raise SourceError(f"source {source} has no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return table.sort_by("id")


def _list_prefix(source: str) -> pa.Table:
    files = [(k, u) for k, u in storage.list_files(source) if k.lower().endswith(IMAGE_EXTENSIONS)
             and not any(part.startswith(("_", ".")) for part in k.split("/"))]
    return pa.table({"id": [k for k, _ in files], "uri": [u for _, u in files]},
                    schema=pa.schema([("id", pa.string()), ("uri", pa.string())]))


def _read_manifest(source: str) -> pa.Table:
    try:
        table = storage.read_table(source)
    except Exception as e:
        raise SourceError(str(e)) from e
    if "uri" not in table.column_names:
        raise SourceError(f"manifest {source} has no 'uri' column (columns: {', '.join(table.column_names)})")
    clash = [c for c in ("partition", "row", "image", "error", "embedding") if c in table.column_names]
    if clash:
        raise SourceError(f"manifest {source} has column(s) {', '.join(map(repr, clash))}, which the store writes "
                          "itself; rename them")
    if "id" not in table.column_names:
        table = table.append_column("id", table.column("uri"))
    for name in ("id", "uri"):
        col = table.column(name)
        if col.null_count:
            raise SourceError(f"manifest {source} has {col.null_count} empty '{name}' values")
        table = table.set_column(table.column_names.index(name), name, pc.cast(col, pa.string()))
    ids = table.column("id")
    counts = pc.value_counts(ids)
    dupes = [d["values"] for d in counts.to_pylist() if d["counts"] > 1]
    if dupes:
        raise SourceError(f"manifest {source} has {len(dupes)} duplicate ids "
                          f"(e.g. {', '.join(map(repr, dupes[:3]))})")
    base = source.rsplit("/", 1)[0] if "/" in source else "."
    uris = [_resolve_uri(u, base) for u in table.column("uri").to_pylist()]
    table = table.set_column(table.column_names.index("uri"), "uri", pa.array(uris, pa.string()))
    order = ["id", "uri"] + [c for c in table.column_names if c not in ("id", "uri")]
    return table.select(order)


def _resolve_uri(uri: str, base: str) -> str:
    """A manifest's uri as a readable URI: remote and absolute ones as given, ``file:///a/b.png`` as
    ``/a/b.png``, relative ones under the manifest's directory ``base``."""
    if uri.startswith("file:"):
        path = uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):]
        if path.startswith("localhost/"):
            path = path[len("localhost"):]
        return storage.absolute(path)
    if storage.is_remote(uri) or uri.startswith("/"):
        return uri
    return storage.join(base, uri) if storage.is_remote(base) else storage.absolute(storage.join(base, uri))
