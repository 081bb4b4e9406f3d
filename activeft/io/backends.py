"""Conditional create, replace and delete of small objects, one provider per URI scheme.

The records several runs race for (a stage's lease, ``activeft/io/lease.py``) need three atomic
operations: read with a version, write only if absent or still at a version, delete only if still at
a version. Each provider makes them atomic its own way and is registered for its schemes with
:func:`register_backend`:

- ``file`` (local paths): a ``flock``-guarded compare-and-swap; the version is the content's sha256;
- ``s3``: conditional requests (``If-None-Match: *``, ``If-Match: <ETag>``); the version is the ETag;
- ``gs``, ``gcs``: generation preconditions through gcsfs (``ifGenerationMatch=0`` creates,
  ``ifGenerationMatch=<generation>`` replaces and deletes); the version is the object's generation;
- ``memory``: fsspec's in-memory filesystem under one process-wide lock (for tests).

:mod:`activeft.io.storage` dispatches to them by scheme and refuses a scheme without a provider.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid

from ..errors import StoreError


class Conflict(Exception):
    """A conditional write or delete lost: the object appeared or changed since it was read."""


class Backend:
    """The conditional operations on one kind of store. ``uri`` is absolute: a local path or ``scheme://...``."""

    def read(self, uri: str) -> tuple[bytes, str] | None:
        """``(content, version)`` of the object, or None when it does not exist."""
        raise NotImplementedError

    def write(self, uri: str, data: bytes, version: str | None) -> str:
        """Write ``data`` if the object is absent (``version=None``) or still at ``version``; return the
        new version. Raises :class:`Conflict` otherwise."""
        raise NotImplementedError

    def delete(self, uri: str, version: str) -> bool:
        """Delete the object if it is still at ``version``; False when it changed or is gone."""
        raise NotImplementedError


_BACKENDS: dict[str, Backend] = {}


def register_backend(*schemes: str):
    """Class decorator: one instance of the provider serves ``schemes`` (``file`` for local paths)."""

    def add(cls: type[Backend]) -> type[Backend]:
        for scheme in schemes:
            _BACKENDS[scheme] = cls()
        return cls

    return add


def backend(scheme: str) -> Backend | None:
    """The provider registered for ``scheme``, or None."""
    return _BACKENDS.get(scheme)


def schemes() -> list[str]:
    return sorted(_BACKENDS)


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CompareAndSwap(Backend):
    """Compare, then swap, inside :meth:`_locked`; the version is the content's sha256. As atomic as the lock."""

    def _locked(self, uri: str) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def _get(self, uri: str) -> bytes:
        """The content; ``FileNotFoundError`` when absent."""
        raise NotImplementedError

    def _put(self, uri: str, data: bytes) -> None:
        raise NotImplementedError

    def _remove(self, uri: str) -> None:
        raise NotImplementedError

    def read(self, uri: str) -> tuple[bytes, str] | None:
        try:
            data = self._get(uri)
        except FileNotFoundError:
            return None
        return data, _version(data)

    def write(self, uri: str, data: bytes, version: str | None) -> str:
        with self._locked(uri):
            current = self.read(uri)
            if (current is None) != (version is None) or (current is not None and current[1] != version):
                raise Conflict(uri)
            self._put(uri, data)
        return _version(data)

    def delete(self, uri: str, version: str) -> bool:
        with self._locked(uri):
            current = self.read(uri)
            if current is None or current[1] != version:
                return False
            self._remove(uri)
        return True


@contextlib.contextmanager
def _local_lock(path: str):
    """An exclusive ``flock`` on ``path + ".lock"`` (released by the kernel if the process dies)."""
    import fcntl

    lock = path + ".lock"
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, now = os.fstat(fd), os.stat(lock) if os.path.exists(lock) else None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev):
            break
        os.close(fd)  # the lock file was removed while we waited: take the new one
    try:
        yield lock
    finally:
        os.close(fd)


@register_backend("file")
class LocalBackend(CompareAndSwap):
    """A local disk: ``flock`` on ``<path>.lock``; the file is replaced by a rename."""

    def _locked(self, path):
        return _local_lock(path)

    def _get(self, path):
        with open(path, "rb") as f:
            return f.read()

    def _put(self, path, data):
        tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _remove(self, path):
        os.unlink(path)
        os.unlink(path + ".lock")  # waiters notice the removed lock file and retry

    def delete(self, path, version):
        if not os.path.exists(path):
            return False  # (without creating a lock file where nothing is left)
        return super().delete(path, version)


@register_backend("memory")
class MemoryBackend(CompareAndSwap):
    """fsspec's ``memory://`` filesystem (one per process), atomic under one process-wide lock."""

    _lock = threading.Lock()

    @staticmethod
    def _fs():
        import fsspec

        return fsspec.filesystem("memory")

    def _locked(self, uri):
        return self._lock

    def _get(self, uri):
        return self._fs().cat_file(uri)

    def _put(self, uri, data):
        self._fs().pipe_file(uri, data)

    def _remove(self, uri):
        self._fs().rm_file(uri)


@register_backend("s3")
class S3Backend(Backend):
    """S3's conditional requests: ``If-None-Match: *`` creates, ``If-Match: <ETag>`` replaces and deletes."""

    @staticmethod
    def _split(uri: str):
        """``(s3fs filesystem, bucket, key)``."""
        import s3fs

        fs = s3fs.S3FileSystem()
        bucket, key, _ = fs.split_path(uri)
        return fs, bucket, key

    def read(self, uri):
        from fsspec.asyn import sync

        fs, bucket, key = self._split(uri)

        async def get():
            r = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            body = r["Body"]
            try:
                return await body.read(), r["ETag"]
            finally:
                body.close()

        try:
            return sync(fs.loop, get)
        except FileNotFoundError:
            return None

    def write(self, uri, data, version):
        fs, bucket, key = self._split(uri)
        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond)["ETag"]
        except (FileExistsError, FileNotFoundError) as e:
            raise Conflict(uri) from e
        except OSError as e:
            if "condition" in str(e).lower():
                raise Conflict(uri) from e
            raise

    def delete(self, uri, version):
        fs, bucket, key = self._split(uri)
        try:
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
            return True
        except (FileNotFoundError, OSError) as e:
            if isinstance(e, FileNotFoundError) or "condition" in str(e).lower():
                return False
            raise


@register_backend("gs", "gcs")
class GCSBackend(Backend):
    """Google Cloud Storage's generation preconditions through gcsfs (a failed one is HTTP 412, which
    gcsfs raises as ``FileExistsError``): ``ifGenerationMatch=0`` creates, ``=<generation>`` replaces
    and deletes."""

    @staticmethod
    def _split(uri: str):
        """``(gcsfs filesystem, bucket, key)``."""
        try:
            import gcsfs
        except ImportError:
            raise StoreError(f"conditional writes to {uri} need the gcsfs package: pip install gcsfs") from None
        fs = gcsfs.GCSFileSystem()
        bucket, key, _ = fs.split_path(uri)
        return fs, bucket, key

    def read(self, uri):
        fs, _, _ = self._split(uri)
        try:
            headers, data = fs.call("GET", fs.url(uri))
        except FileNotFoundError:
            return None
        return data, headers["x-goog-generation"]

    def write(self, uri, data, version):
        from urllib.parse import quote

        fs, bucket, key = self._split(uri)
        try:
            obj = fs.call("POST", f"{fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
                          uploadType="media", name=key, ifGenerationMatch=version or "0", data=data,
                          json_out=True)
        except FileExistsError as e:
            raise Conflict(uri) from e
        return str(obj["generation"])

    def delete(self, uri, version):
        fs, bucket, key = self._split(uri)
        try:
            fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=version)
        except (FileExistsError, FileNotFoundError):
            return False
        return True
