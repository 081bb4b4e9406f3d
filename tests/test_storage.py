"""Conditional operations behind one interface: the same behaviour on a local disk, ``memory://`` and a
real S3 protocol server (moto on 127.0.0.1); racing writers; a scheme without an atomic provider is
refused in one line unless ``ACTIVEFT_UNSAFE_LEASES=1``, which warns; a stage run on ``memory://``.
``gs://`` has no server here: only its registration and the missing-gcsfs error are checked."""

import logging
import sys
import threading
import time
import uuid

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import activeft
from activeft.errors import OutputExistsError, StoreError
from activeft.io import backends, storage
from activeft.io.lease import LEASE, Lease

pytestmark = pytest.mark.timeout(60)


class Scratch(MemoryFileSystem):
    """An fsspec filesystem with no conditional-operations provider."""

    protocol = "scratch"
    store: dict = {}
    pseudo_dirs = [""]


fsspec.register_implementation("scratch", Scratch, clobber=True)


@pytest.fixture(params=["local", "memory", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return request.getfixturevalue("bucket")


def test_create_replace_and_delete_are_conditional_on_every_provider(root):
    uri = storage.join(root, "dir", "rec.json")
    assert storage.read_versioned(uri) is None
    v1 = storage.write_if(uri, b"one", None)
    with pytest.raises(storage.Conflict):
        storage.write_if(uri, b"other", None)  # create: already there
    assert storage.read_versioned(uri) == (b"one", v1)

    v2 = storage.write_if(uri, b"two", v1)
    with pytest.raises(storage.Conflict):
        storage.write_if(uri, b"stale", v1)  # replace: changed since v1
    assert storage.read_versioned(uri) == (b"two", v2) and v2 != v1

    assert storage.delete_if(uri, v1) is False  # changed since v1: stays
    assert storage.delete_if(uri, v2) is True
    assert storage.read_versioned(uri) is None
    assert storage.delete_if(uri, v2) is False  # gone
    with pytest.raises(storage.Conflict):
        storage.write_if(uri, b"late", v2)  # replace of an object that is gone


def race(n: int, write) -> list:
    """``write(i)`` from ``n`` threads at once; what each returned or raised."""
    start, out = threading.Barrier(n), [None] * n

    def one(i):
        start.wait()
        try:
            out[i] = write(i)
        except storage.Conflict as e:
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_racing_writers_on_memory_exactly_one_wins(monkeypatch):
    get = backends.MemoryBackend._get

    def slow(self, uri):  # as a network store's: every writer has read before the first one writes
        try:
            return get(self, uri)
        finally:
            time.sleep(0.02)

    monkeypatch.setattr(backends.MemoryBackend, "_get", slow)
    uri = f"memory://{uuid.uuid4().hex}/rec"
    created = race(8, lambda i: storage.write_if(uri, f"create {i}".encode(), None))
    winners = [i for i, r in enumerate(created) if isinstance(r, str)]
    assert len(winners) == 1 and storage.read_versioned(uri)[0] == f"create {winners[0]}".encode()

    version = storage.read_versioned(uri)[1]
    replaced = race(8, lambda i: storage.write_if(uri, f"replace {i}".encode(), version))
    winners = [i for i, r in enumerate(replaced) if isinstance(r, str)]
    assert len(winners) == 1 and storage.read_versioned(uri)[0] == f"replace {winners[0]}".encode()


def test_a_lease_on_a_scheme_without_a_provider_is_refused_unless_the_risk_is_accepted(monkeypatch):
    monkeypatch.delenv(storage.UNSAFE_ENV, raising=False)
    uri = f"scratch://{uuid.uuid4().hex}/out"
    with pytest.raises(StoreError) as refused:
        Lease.take(uri, "test")
    message = str(refused.value)
    assert "\n" not in message and "scratch://" in message and f"{storage.UNSAFE_ENV}=1" in message
    assert not storage.exists(storage.join(uri, LEASE))

    monkeypatch.setenv(storage.UNSAFE_ENV, "1")
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # (the module's own records, whatever the test run's logging set-up)
    monkeypatch.setattr(storage.log, "handlers", [handler])
    with Lease.take(uri, "test") as held:
        assert storage.exists(storage.join(uri, LEASE))
        with pytest.raises(OutputExistsError, match="being written by another run"):
            Lease.take(uri, "test")
        held.renew()
    assert not storage.exists(storage.join(uri, LEASE))
    warnings = [r.getMessage() for r in records]
    assert len(warnings) == 1 and "check-then-write" in warnings[0] and uri in warnings[0]


def test_gs_has_a_provider_and_without_gcsfs_says_so_in_one_line(monkeypatch):
    assert isinstance(backends.backend("gs"), backends.GCSBackend) and backends.backend("gcs") is not None
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed
    with pytest.raises(StoreError, match=r"^conditional writes to gs://b/out/_work/lease\.json need the gcsfs "
                                         r"package: pip install gcsfs$"):
        storage.write_if("gs://b/out/_work/lease.json", b"{}", None)


def test_a_stage_on_memory_takes_and_releases_its_lease_and_refuses_a_second_run(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 8)).astype("float32"))
    (tmp_path / "ids.txt").write_text("".join(f"i{i}\n" for i in range(40)))
    store = activeft.import_embeddings(str(tmp_path / "x.npy"), str(tmp_path / "store"), ids=str(tmp_path / "ids.txt"))
    out = f"memory://{uuid.uuid4().hex}/sel"

    first = activeft.select(store, 5, method="random", output=out)
    assert len(first.ids) == 5 and storage.exists(storage.join(out, "selection.parquet"))
    assert not storage.exists(storage.join(out, LEASE))  # released
    with pytest.raises(OutputExistsError, match="not empty"):
        activeft.select(store, 5, method="random", output=out)
    again = activeft.select(store, 5, method="random", output=out, overwrite=True)
    assert again.ids == first.ids and [k for k, _ in storage.list_files(out)] == \
        ["_work/config.json", "_work/files.json", "selection.csv", "selection.json", "selection.parquet"]
