"""URIs to filesystems, and the few file operations every stage shares.

Every stage reads and writes URIs: a local path, ``s3://``, ``gs://`` (pyarrow's own
filesystems) or any other fsspec protocol (wrapped in ``PyFileSystem``). Credentials come
from the standard environment / IAM chain (``AWS_ENDPOINT_URL`` etc.) and are never logged.

Writes are atomic for readers: on a local disk a file is written under a temporary name and
renamed; on an object store it is buffered and sent as one upload, which appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import ActiveftError, StoreError


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


@functools.lru_cache(maxsize=64)
def _filesystem(scheme: str, netloc: str) -> pafs.FileSystem:
    if scheme in ("", "file"):
        return pafs.LocalFileSystem()
    try:
        fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{netloc}")
        return fs
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a URI or local path; local paths become absolute."""
    uri = str(uri)
    if not is_remote(uri):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return _filesystem("", ""), os.path.abspath(os.path.expanduser(path))
    scheme, rest = uri.split("://", 1)
    netloc = rest.split("/", 1)[0]
    fs = _filesystem(scheme, netloc)
    if isinstance(fs, pafs.PyFileSystem):  # fsspec paths keep their protocol
        return fs, uri
    return fs, rest.rstrip("/")


def absolute(uri: str) -> str:
    """``uri`` with a local path made absolute (Ray workers do not share the driver's cwd)."""
    uri = str(uri).rstrip("/") or "/"
    if is_remote(uri):
        return uri
    return os.path.abspath(os.path.expanduser(uri[len("file://"):] if uri.startswith("file://") else uri))


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def info(uri: str) -> pafs.FileInfo:
    fs, path = resolve(uri)
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    return info(uri).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    return info(uri).type == pafs.FileType.File


def list_files(uri: str, recursive: bool = True) -> list[tuple[str, str]]:
    """``(relative key, uri)`` of every file under ``uri``, sorted by key."""
    fs, root = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=recursive, allow_not_found=True))
    base = root.rstrip("/") + "/"
    out = []
    for i in infos:
        if i.type == pafs.FileType.File:
            key = i.path[len(base):] if i.path.startswith(base) else i.base_name
            out.append((key, join(uri, key)))
    return sorted(out)


def has_entries(uri: str) -> bool:
    """True when ``uri`` is a file or a directory with anything in it."""
    fs, path = resolve(uri)
    i = fs.get_file_info(path)
    if i.type == pafs.FileType.File:
        return True
    if i.type != pafs.FileType.Directory:
        return False
    return bool(fs.get_file_info(pafs.FileSelector(path, recursive=False)))


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def delete(uri: str) -> None:
    """Remove a file or a directory tree; a missing path is fine."""
    fs, path = resolve(uri)
    i = fs.get_file_info(path)
    if i.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif i.type == pafs.FileType.File:
        fs.delete_file(path)


def check_writable(uri: str) -> None:
    """Create ``uri`` as a directory and prove a file can be written there."""
    probe = join(uri, f".write-probe-{uuid.uuid4().hex}")
    try:
        makedirs(uri)
        write_bytes(probe, b"")
        delete(probe)
    except (OSError, pa.ArrowException) as e:
        raise StoreError(f"output {uri} is not writable: {_first_line(e)}") from e


@contextlib.contextmanager
def atomic_output(uri: str) -> Iterator[pa.NativeFile]:
    """An output stream whose file appears at ``uri`` only once it is complete."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
        try:
            with fs.open_output_stream(tmp) as f:
                yield f
            fs.move(tmp, path)
        finally:
            if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                fs.delete_file(tmp)
    else:  # buffered: closing an object-store stream completes the upload, also after a failed write
        buffer = pa.BufferOutputStream()
        yield buffer
        with fs.open_output_stream(path) as f:
            f.write(buffer.getvalue())


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_output(uri) as f:
        f.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return f.read()


def write_json(uri: str, obj) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def write_parquet(uri: str, table: pa.Table) -> None:
    with atomic_output(uri) as f:
        pq.write_table(table, f)


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def read_table(uri: str) -> pa.Table:
    """A user table (``.csv`` or ``.parquet``) as Arrow, with a one-line error if unreadable.

    CSV ``id`` and ``uri`` columns are read as strings (``007`` stays ``007``).
    """
    import pyarrow.csv as pacsv

    if not exists(uri):
        raise ActiveftError(f"table {uri} does not exist")
    try:
        if str(uri).lower().endswith(".csv"):
            fs, path = resolve(uri)
            with fs.open_input_stream(path) as f:
                strings = {"id": pa.string(), "uri": pa.string()}
                return pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(column_types=strings))
        return read_parquet(uri)
    except pa.ArrowException as e:
        raise ActiveftError(f"cannot read table {uri}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
