"""One writer per output: a lease (``_work/lease.json``) with a heartbeat.

A run takes its output's lease before writing anything, with a conditional create (the storage
provider of the output's scheme: S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``, a
``flock``-guarded create on a local disk; a scheme without one is refused unless
``ACTIVEFT_UNSAFE_LEASES=1``, see :mod:`activeft.io.storage`); a daemon thread renews it every
1/6 of the expiry with a conditional replace, so a run whose lease was taken over learns it and
commits nothing; a conditional delete releases it. A lease whose heartbeat is older than its
expiry (``ACTIVEFT_LEASE_EXPIRY_S``, default 90 s) was left by a run that died: it is taken over.
A second writer is refused with one line naming the holder (user, host, pid, start, command).
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid

from ..errors import OutputExistsError, ParameterError, StoreError
from . import storage

log = logging.getLogger(__name__)
LEASE = "_work/lease.json"
EXPIRY_ENV = "ACTIVEFT_LEASE_EXPIRY_S"  # seconds without a heartbeat after which a lease may be taken over
EXPIRY_DEFAULT = 90.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def expiry() -> float:
    """Seconds without a heartbeat after which a lease counts as abandoned (``ACTIVEFT_LEASE_EXPIRY_S``)."""
    try:
        value = float(os.environ.get(EXPIRY_ENV, EXPIRY_DEFAULT))
    except ValueError:
        raise ParameterError(f"{EXPIRY_ENV} must be a number of seconds; got {os.environ[EXPIRY_ENV]!r}") from None
    if value <= 0:
        raise ParameterError(f"{EXPIRY_ENV} must be > 0 seconds; got {value:g}")
    return value


def _parse(data: bytes) -> dict:
    try:
        rec = json.loads(data)
        return rec if isinstance(rec, dict) else {}
    except ValueError:
        return {}  # unreadable: no heartbeat, so it counts as expired


def _expired(rec: dict) -> bool:
    return time.time() - float(rec.get("heartbeat_epoch", 0)) > float(rec.get("expires_after_s", expiry()))


def _describe(rec: dict) -> str:
    age = time.time() - float(rec.get("heartbeat_epoch", 0))
    return (f"{rec.get('owner')}@{rec.get('host')} pid {rec.get('pid')}, {rec.get('stage')} started "
            f"{rec.get('start')}, last heartbeat {age:.0f} s ago: {rec.get('command')}")


class Lease:
    """The one writer of an output: ``_work/lease.json`` (owner, host, pid, start, heartbeat, token)."""

    _held: dict[str, Lease] = {}

    def __init__(self, uri: str, what: str):
        self.uri, self.what = uri, what
        self.path = storage.join(uri, LEASE)
        self.expiry = expiry()
        self.token = uuid.uuid4().hex
        self.start = _now()
        self.version: str | None = None
        self.lost: str | None = None
        self.renewed = time.monotonic()
        self._stop = threading.Event()
        self._renewing = threading.Lock()  # the heartbeat and a commit never renew at once
        self._thread: threading.Thread | None = None
        self._created: list[str] = []

    def _record(self) -> bytes:
        command = " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])
        return json.dumps({"owner": _user(), "host": socket.gethostname(), "pid": os.getpid(), "start": self.start,
                           "heartbeat": _now(), "heartbeat_epoch": time.time(),
                           "expires_after_s": self.expiry, "stage": self.what, "token": self.token,
                           "command": command.replace("\n", " ")[:200]}, indent=1).encode()

    @staticmethod
    def holder(uri: str, mine: Lease | None = None) -> str | None:
        """Why ``uri`` may not be written now: a live lease of another run, described; else None."""
        current = storage.read_versioned(storage.join(uri, LEASE))
        if current is None:
            return None
        rec = _parse(current[0])
        if (mine is not None and rec.get("token") == mine.token) or _expired(rec):
            return None
        left = float(rec.get("expires_after_s", 0)) - (time.time() - float(rec.get("heartbeat_epoch", 0)))
        return (f"output {uri} is being written by another run ({_describe(rec)}); wait for it to finish, or if it "
                f"died, retry in {max(left, 0):.0f} s, when its lease expires")

    @classmethod
    def take(cls, uri: str, what: str) -> Lease:
        """Take the lease of ``uri`` or refuse with one line naming its holder."""
        lease = cls(uri, what)
        if not storage.is_remote(uri):
            lease._created = [d for d in (storage.join(uri, "_work"), uri) if not os.path.isdir(d)]
        try:
            lease._acquire()
        except OSError as e:
            lease._remove_created()
            raise StoreError(f"output {uri} is not writable: {storage._first_line(e)}") from e
        except BaseException:
            lease._remove_created()
            raise
        lease._thread = threading.Thread(target=lease._beat, name=f"activeft-lease {uri}", daemon=True)
        lease._thread.start()
        cls._held[lease.token] = lease
        return lease

    def _acquire(self) -> None:
        for _ in range(3):
            current = storage.read_versioned(self.path)
            try:
                if current is None:
                    self.version = storage.write_if(self.path, self._record(), None)
                    return
                rec = _parse(current[0])
                if not _expired(rec):
                    break
                self.version = storage.write_if(self.path, self._record(), current[1])
                log.warning("took over the expired lease of %s (%s)", self.uri, _describe(rec))
                return
            except storage.Conflict:
                continue  # another run got there first: look again
        raise OutputExistsError(Lease.holder(self.uri) or f"output {self.uri} is being written by another run")

    def renew(self) -> None:
        """Prove the lease is still ours and push its heartbeat; raises once another run took it over."""
        with self._renewing:
            self._renew()

    def _renew(self) -> None:
        if self.lost:
            raise OutputExistsError(self.lost)
        current = storage.read_versioned(self.path)
        try:
            if current is None or current[1] != self.version:
                raise storage.Conflict(self.path)
            self.version = storage.write_if(self.path, self._record(), self.version)
        except storage.Conflict:
            holder = f" by another run ({_describe(_parse(current[0]))})" if current else ""
            self.lost = (f"output {self.uri} was taken over{holder} while this run wrote it (no heartbeat for "
                         f"{self.expiry:g} s); this run's result was not committed")
            raise OutputExistsError(self.lost) from None
        self.renewed = time.monotonic()

    def _beat(self) -> None:
        interval = max(self.expiry / 6, 0.05)
        warned = False
        while not self._stop.wait(interval):
            try:
                self.renew()
            except OutputExistsError as e:
                log.error("%s", e)
                return
            except Exception as e:  # an object store blip: the next beat, or the commit's renew, decides
                log.debug("could not renew the lease of %s: %s", self.uri, storage._first_line(e))
                if not warned and time.monotonic() - self.renewed > self.expiry / 2:
                    warned = True
                    log.warning("the lease of %s has not been renewed for %.0f s: %s", self.uri,
                                time.monotonic() - self.renewed, storage._first_line(e))

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def release(self, outage: bool = False) -> None:
        """Give the lease up (``outage``: the store is unreachable, so leave it to expire)."""
        self.stop_heartbeat()
        Lease._held.pop(self.token, None)
        if not outage and self.lost is None and self.version is not None:
            try:
                storage.delete_if(self.path, self.version)
            except Exception as e:  # it expires on its own
                log.warning("could not release the lease of %s: %s", self.uri, storage._first_line(e))
        self.version = None
        self._remove_created()

    def _remove_created(self) -> None:
        for d in self._created:  # only the directories taking the lease created, if nothing else is in them
            with contextlib.suppress(OSError):
                os.rmdir(d)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.release(outage=isinstance(error, storage.StorageUnavailable))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


@atexit.register
def _release_all() -> None:
    for lease in list(Lease._held.values()):
        lease.release()
