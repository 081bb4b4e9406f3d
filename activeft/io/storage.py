"""URIs to filesystems, and the few file operations every stage shares.

Every stage reads and writes URIs: a local path, ``s3://``, ``gs://`` (pyarrow's own
filesystems) or any other fsspec protocol (wrapped in ``PyFileSystem``). Credentials come
from the standard environment / IAM chain (``AWS_ENDPOINT_URL`` etc.) and are never logged.

Writes are atomic for readers: on a local disk a file is written under a temporary name and
renamed; on an object store it is buffered and sent as one upload, which appears whole or not at all.

An object store that cannot be reached (or refuses a request) after its client's own retries
raises :class:`StorageUnavailable`, one line naming the URI and the reason. Small records that
several runs may race for (a stage's lease) use the conditional operations :func:`read_versioned`,
:func:`write_if` and :func:`delete_if`, which dispatch by scheme to the atomic providers of
:mod:`activeft.io.backends` (local disks, ``s3://``, ``gs://``, ``memory://``). Any other scheme is
refused in one line, unless ``ACTIVEFT_UNSAFE_LEASES=1`` accepts a check-then-write there (two runs
racing may then both hold a lease), which logs a warning.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import ActiveftError, ParameterError, StoreError
from . import backends
from .backends import Conflict

log = logging.getLogger(__name__)


class StorageUnavailable(StoreError):
    """An object store could not be reached, or refused a request, after its client's retries."""

    def __str__(self) -> str:  # one line, also after Ray Data appended its retry advice to the message
        return str(self.args[0]).splitlines()[0] if self.args else ""


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def _reason(e) -> str:
    """The useful part of an object-store error: pyarrow's "When ... in bucket 'b': " prefix dropped."""
    text = e if isinstance(e, str) else _first_line(e)
    return re.sub(r"^When [^:]*?(in bucket '[^']*')?: ", "", text.strip())


def _endpoint() -> str:
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return re.sub(r"//[^/@]*@", "//", url) if url else "the default endpoint"  # never a password


def unavailable(uri: str, error: BaseException) -> StorageUnavailable | None:
    """``error`` as one :class:`StorageUnavailable` line naming ``uri``, if it is an object store's failure
    (also when a library wrapped it, e.g. Ray Train's ``ControllerError``); else None."""
    if not is_remote(uri) or isinstance(error, (FileNotFoundError, FileExistsError, Conflict)):
        return None
    if isinstance(error, StorageUnavailable):
        return error
    reason = _reason(error)
    text = "\n".join(str(a) for a in getattr(error, "args", ())) or str(error)
    store_error = isinstance(error, (OSError, pa.ArrowException)) or \
        type(error).__module__.split(".")[0] in ("botocore", "aiobotocore")
    if not store_error:  # a wrapper: look for the store's own words in its text
        found = re.search(r"[^\n]*AWS Error [^\n]*", text)
        if not found:
            return None
        reason = _reason(found[0])
    if re.search(r"NETWORK_CONNECTION|Could not connect|Couldn't connect|EndpointConnectionError|"
                 r"Connect timeout|Connection refused|timed out", reason + type(error).__name__):
        return StorageUnavailable(f"cannot reach the object store for {uri} at {_endpoint()} (after retries): "
                                  f"{reason}")
    return StorageUnavailable(f"object store request for {uri} failed: {reason}")


@contextlib.contextmanager
def _remote_errors(uri: str):
    """Turn an object store's failure (after the client's retries) into one :class:`StorageUnavailable`
    line naming the URI; a missing object stays ``FileNotFoundError``, local errors pass through."""
    try:
        yield
    except Exception as e:
        converted = unavailable(uri, e) if isinstance(e, (OSError, pa.ArrowException)) or \
            type(e).__module__.split(".")[0] in ("botocore", "aiobotocore") else None
        if converted is None or converted is e:
            raise
        raise converted from e


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
    if isinstance(fs, pafs.PyFileSystem):  # an fsspec path, as its filesystem lists it (``memory://a`` -> ``/a``)
        import fsspec.core

        return fs, fsspec.core.strip_protocol(uri)
    return fs, rest.rstrip("/")


def absolute(uri: str) -> str:
    """``uri`` with a local path made absolute (Ray workers do not share the driver's cwd).

    An empty string is an error, never the current directory or ``/``.
    """
    text = str(uri).strip()
    if not text:
        raise ParameterError("an empty path was given where a directory, file or URI is needed")
    if is_remote(text):
        scheme, rest = text.split("://", 1)
        return f"{scheme}://{rest.rstrip('/')}"
    uri = text.rstrip("/") or "/"
    return os.path.abspath(os.path.expanduser(uri[len("file://"):] if uri.startswith("file://") else uri))


def is_root(uri: str) -> bool:
    """True for a filesystem root: ``/`` (or a drive), ``s3://``, or a bucket's root ``s3://bucket``."""
    if is_remote(uri):
        rest = str(uri).split("://", 1)[1].strip("/")
        return "/" not in rest
    path = absolute(uri)
    return os.path.dirname(path) == path


def output_uri(uri, what: str = "output") -> str:
    """An output's absolute URI; empty outputs and filesystem roots are refused (nothing is written
    there, and nothing there is ever replaced)."""
    text = "" if uri is None else str(uri).strip()
    if not text:
        raise ParameterError(f"{what} is empty; give a directory or prefix to write to")
    full = absolute(text)
    if is_root(full):
        raise ParameterError(f"{what} {text!r} is the root of a filesystem ({full}); give a directory or "
                             "prefix below it")
    return full


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def info(uri: str) -> pafs.FileInfo:
    with _remote_errors(uri):
        fs, path = resolve(uri)
        return fs.get_file_info(path)


def exists(uri: str) -> bool:
    return info(uri).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    return info(uri).type == pafs.FileType.File


def list_files(uri: str, recursive: bool = True) -> list[tuple[str, str]]:
    """``(relative key, uri)`` of every file under ``uri``, sorted by key."""
    with _remote_errors(uri):
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
    with _remote_errors(uri):
        fs, path = resolve(uri)
        i = fs.get_file_info(path)
        if i.type == pafs.FileType.File:
            return True
        if i.type != pafs.FileType.Directory:
            return False
        return bool(fs.get_file_info(pafs.FileSelector(path, recursive=False)))


def makedirs(uri: str) -> None:
    with _remote_errors(uri):
        fs, path = resolve(uri)
        fs.create_dir(path, recursive=True)


def delete(uri: str) -> None:
    """Remove a file or a directory tree; a missing path is fine."""
    with _remote_errors(uri):
        fs, path = resolve(uri)
        i = fs.get_file_info(path)
        if i.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif i.type == pafs.FileType.File:
            fs.delete_file(path)


def move(src: str, dst: str) -> None:
    """Move one file (a rename on a local disk; copy and delete on an object store), replacing ``dst``."""
    with _remote_errors(src):
        fs, path = resolve(src)
        _, target = resolve(dst)
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        fs.move(path, target)


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
        with _remote_errors(uri), fs.open_output_stream(path) as f:
            f.write(buffer.getvalue())


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_output(uri) as f:
        f.write(data)


def read_bytes(uri: str) -> bytes:
    with _remote_errors(uri):
        fs, path = resolve(uri)
        with fs.open_input_file(path) as f:
            return f.read()


def write_json(uri: str, obj) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def write_parquet(uri: str, table: pa.Table, row_groups: list[int] | None = None, **options) -> None:
    """Write ``table``; ``row_groups``: the row counts of its consecutive row groups (default: pyarrow's);
    ``options``: pyarrow's writer options (``use_dictionary``, ...)."""
    with atomic_output(uri) as f:
        if row_groups is None:
            pq.write_table(table, f, **options)
            return
        with pq.ParquetWriter(f, table.schema, **options) as writer:
            start = 0
            for rows in row_groups:
                writer.write_table(table.slice(start, rows), row_group_size=max(rows, 1))
                start += rows


def write_csv(uri: str, table: pa.Table) -> None:
    """Write ``table`` as CSV for people to open in a spreadsheet: a text cell starting with ``=``,
    ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'`` (OWASP's CSV-injection rule),
    so no cell runs as a formula."""
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    columns = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            risky = pc.fill_null(pc.match_substring_regex(col, r"^[=+\-@\t\r]"), False)
            col = pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col)
        columns.append(col)
    buf = pa.BufferOutputStream()
    pacsv.write_csv(pa.table(columns, names=table.column_names), buf)
    write_bytes(uri, buf.getvalue().to_pybytes())


def read_parquet(uri: str, columns: list[str] | None = None, filters=None) -> pa.Table:
    """A Parquet file; ``filters`` (pyarrow's) skip the row groups whose statistics rule them out."""
    with _remote_errors(uri):
        fs, path = resolve(uri)
        return pq.read_table(path, filesystem=fs, columns=columns, filters=filters)


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


# ---- conditional operations: the records several runs may race for ----------------------------------------------

UNSAFE_ENV = "ACTIVEFT_UNSAFE_LEASES"  # "1": a scheme without an atomic provider gets check-then-write
_warned: set[str] = set()
_warning = threading.Lock()  # (a lease's heartbeat thread and its run may warn at once)


class _CheckThenWrite(backends.CompareAndSwap):
    """Any other filesystem, only under ``ACTIVEFT_UNSAFE_LEASES=1``: check, then write, so two runs racing
    between the two may both win. Logs a warning once per URI."""

    def _locked(self, uri):
        with _warning:
            first = uri not in _warned
            _warned.add(uri)
        if first:
            log.warning("%s=1: %s is written by check-then-write, not atomically; two runs may both believe "
                        "they hold its lease", UNSAFE_ENV, uri)
        return contextlib.nullcontext()

    def _get(self, uri):
        return read_bytes(uri)

    def _put(self, uri, data):
        write_bytes(uri, data)

    def _remove(self, uri):
        delete(uri)


def _backend(uri: str) -> tuple[backends.Backend, str]:
    """The conditional-operations provider for ``uri``'s scheme, and the absolute URI; one line refusing a
    scheme without one (unless ``ACTIVEFT_UNSAFE_LEASES=1``)."""
    uri = absolute(uri)
    scheme = uri.split("://", 1)[0] if is_remote(uri) else "file"
    found = backends.backend(scheme)
    if found is not None:
        return found, uri
    if os.environ.get(UNSAFE_ENV) == "1":
        return _CheckThenWrite(), uri
    atomic = ", ".join(f"{s}://" for s in backends.schemes())
    raise StoreError(f"{uri}: {scheme}:// has no atomic conditional write (only {atomic}), so two runs could both "
                     f"take its lease; set {UNSAFE_ENV}=1 to accept that risk (check, then write)")


def read_versioned(uri: str) -> tuple[bytes, str] | None:
    """``(content, version)`` of a small object, or None when it does not exist. The version is
    what :func:`write_if` and :func:`delete_if` compare against (S3: the ETag; GCS: the generation)."""
    with _remote_errors(uri):
        provider, uri = _backend(uri)
        return provider.read(uri)


def write_if(uri: str, data: bytes, version: str | None) -> str:
    """Write ``data`` only if the object is absent (``version=None``) or still at ``version``; return
    the new version. Raises :class:`Conflict` otherwise."""
    with _remote_errors(uri):
        provider, uri = _backend(uri)
        return provider.write(uri, data, version)


def delete_if(uri: str, version: str) -> bool:
    """Delete the object if it is still at ``version``; False when it changed or is gone."""
    with _remote_errors(uri):
        provider, uri = _backend(uri)
        return provider.delete(uri, version)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
