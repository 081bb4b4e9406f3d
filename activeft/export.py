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

from .errors import ParameterError
from .io import protocol, storage
from .params import BOOL, TEXT, Rule, integer
from .select import Selection, read_selection
from .stages import Section, stage

log = logging.getLogger(__name__)
MARKER = "export.json"
KIND = protocol.Kind("export", MARKER, r"selection\.csv|labelstudio\.json|export\.json")


def _presigner(expires: int):
    import s3fs

    fs = s3fs.S3FileSystem()

    def sign(uri: str) -> str:
        if not uri.startswith("s3://"):
            raise ParameterError(f"presigned URLs are made for s3:// URIs only; got {uri!r}")
        return fs.sign(uri, expiration=expires)

    return sign


@stage({"selection": Rule(str, lambda v: isinstance(v, (str, Selection)), "a selection"),
        "output": TEXT, "label_studio": BOOL, "presign": BOOL, "expires": integer(1)}, output=KIND,
       section=Section("export", fixed=("selection",), extra={"output": (str, "{output}/export")}, always=True))
def export(selection, output: str, *, label_studio: bool = True, presign: bool = False,
           expires: int = 7 * 24 * 3600) -> dict:
    """Write ``selection.csv`` (id, uri, rank) and ``labelstudio.json`` for the selected images.

    A selection from imported embeddings has ids but no image uris: then only the CSV is written.

    Parameters
    ----------
    selection : str or Selection
        A finished selection (its directory) or the object.
    output : str
        Directory for the export (replaced when it holds an earlier export).
    label_studio : bool, default=True
        Also write Label Studio tasks (``labelstudio.json``).
    presign : bool
        Presigned ``https`` URLs instead of ``s3://`` URIs in the tasks.
    expires : int, default=604800
        Lifetime of presigned URLs in seconds.

    Examples
    --------
    >>> import json, tempfile
    >>> import pyarrow as pa
    >>> from activeft import Selection, export
    >>> d = tempfile.mkdtemp()
    >>> sel = Selection(["a.jpg"], pa.table({"id": ["a.jpg"], "uri": ["s3://b/a.jpg"], "rank": [0]}), {})
    >>> info = export(sel, f"{d}/export")
    >>> json.load(open(f"{d}/export/labelstudio.json"))
    [{'data': {'image': 's3://b/a.jpg', 'id': 'a.jpg', 'rank': 0}}]
    """
    sel = selection if isinstance(selection, Selection) else read_selection(selection)
    table = sel.table
    has_uris = "uri" in table.column_names
    output = storage.output_uri(output)
    settings = {"selection": sel.uri, "label_studio": label_studio, "presign": presign}
    with protocol.writing(output, KIND, settings, resume=None, overwrite=True) as out:
        files = {"csv": storage.join(output, "selection.csv")}  # where they will be, once committed
        storage.write_csv(out.join("selection.csv"), table.select(["id", "uri", "rank"] if has_uris else
                                                                  ["id", "rank"]))
        if label_studio and not has_uris:
            log.warning("export: the store holds imported embeddings (ids, no image uris): selection.csv lists the "
                        "ids; no Label Studio tasks")
        elif label_studio:
            sign = _presigner(expires) if presign else (lambda uri: uri)
            tasks = [{"data": {"image": sign(u), "id": i, "rank": r}}
                     for i, u, r in zip(table.column("id").to_pylist(), table.column("uri").to_pylist(),
                                        table.column("rank").to_pylist(), strict=True)]
            files["label_studio"] = storage.join(output, "labelstudio.json")
            storage.write_bytes(out.join("labelstudio.json"), json.dumps(tasks, indent=1).encode())
        info = out.commit({"selection": sel.uri, "tasks": table.num_rows, "files": files, "presigned": presign,
                           "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + expires))
                           if presign else None})
    log.info("export: %d tasks -> %s", table.num_rows, output)
    return info


