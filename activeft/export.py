"""Exports for annotation tools: a plain CSV of ids and URIs, and Label Studio import JSON.

Label Studio imports a JSON list of tasks ``{"data": {"image": <url>, ...}}`` (the ``image`` key
is what a labeling config refers to as ``$image``). ``s3://`` URIs are kept as they are (Label
Studio resolves them through a connected S3 source storage) or, with ``presign=True``, replaced
by presigned HTTPS URLs valid for ``expires`` seconds. ``export.json``, written last, is the
completion marker.
"""

from __future__ import annotations

import json
import logging
import time

import pyarrow as pa
import pyarrow.csv as pacsv

from . import stage, storage
from .errors import ParameterError, check
from .select import Selection, read_selection

log = logging.getLogger(__name__)
MARKER = "export.json"


def _presigner(expires: int):
    import s3fs

    fs = s3fs.S3FileSystem()

    def sign(uri: str) -> str:
        if not uri.startswith("s3://"):
            raise ParameterError(f"presigned URLs are made for s3:// URIs only; got {uri!r}")
        return fs.sign(uri, expiration=expires)

    return sign


def export(selection, output: str, *, label_studio: bool = True, presign: bool = False,
           expires: int = 7 * 24 * 3600) -> dict:
    """Write ``selection.csv`` (id, uri, rank) and ``labelstudio.json`` for the selected images.

    A selection from imported embeddings has ids but no image uris: then only the CSV is written.

    Examples
    --------
    >>> import json, tempfile
    >>> import pyarrow as pa
    >>> from activeft import Selection
    >>> d = tempfile.mkdtemp()
    >>> sel = Selection(["a.jpg"], pa.table({"id": ["a.jpg"], "uri": ["s3://b/a.jpg"], "rank": [0]}), {})
    >>> info = export(sel, f"{d}/export")
    >>> json.load(open(f"{d}/export/labelstudio.json"))
    [{'data': {'image': 's3://b/a.jpg', 'id': 'a.jpg', 'rank': 0}}]
    """
    check(isinstance(expires, int) and expires >= 1, "expires", "export", "an int >= 1 (seconds)", expires)
    sel = selection if isinstance(selection, Selection) else read_selection(selection)
    table = sel.table
    has_uris = "uri" in table.column_names
    output = storage.absolute(output)
    settings = {"selection": sel.uri, "label_studio": label_studio, "presign": presign}
    stage.start(output, "export", settings,
                stage.check(output, "export", settings, marker=MARKER, resume=None, overwrite=True))
    files = {}
    buf = pa.BufferOutputStream()
    pacsv.write_csv(table.select(["id", "uri", "rank"] if has_uris else ["id", "rank"]), buf)
    files["csv"] = storage.join(output, "selection.csv")
    storage.write_bytes(files["csv"], buf.getvalue().to_pybytes())
    if label_studio and not has_uris:
        log.warning("export: the store holds imported embeddings (ids, no image uris): selection.csv lists the ids; "
                    "no Label Studio tasks")
    elif label_studio:
        sign = _presigner(expires) if presign else (lambda uri: uri)
        tasks = [{"data": {"image": sign(u), "id": i, "rank": r}}
                 for i, u, r in zip(table.column("id").to_pylist(), table.column("uri").to_pylist(),
                                    table.column("rank").to_pylist(), strict=True)]
        files["label_studio"] = storage.join(output, "labelstudio.json")
        storage.write_bytes(files["label_studio"], json.dumps(tasks, indent=1).encode())
    info = {"selection": sel.uri, "tasks": table.num_rows, "files": files, "presigned": presign,
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + expires)) if presign else None}
    storage.write_json(storage.join(output, MARKER), info)
    log.info("export: %d tasks -> %s", table.num_rows, output)
    return info
