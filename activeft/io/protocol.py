"""The stage protocol: how every stage treats its output, in one place.

An output (a directory or prefix) belongs to one stage. ``_work/config.json`` records the stage and
the settings that define its result; the stage's *marker* (``selection.json``, ``_manifest.json``,
``metrics.json``, ...) is written last and carries :func:`header`, just after ``_work/files.json``
(the stage, its settings and the list of files it wrote), so an output without its marker is
unfinished. Given an output, :func:`check` decides, writing nothing:

- empty or absent: a new run;
- non-empty, neither ``resume`` nor ``overwrite``: refused;
- ``overwrite``: only an output of the same stage holding nothing but what that stage wrote (its
  recorded files, the names its :class:`Kind` owns, its ``_work/``); anything else is named and refused;
- ``resume``: only an output of the same stage started, and if finished, finished, with the same
  settings (a change is refused, naming it); a finished one is reported as such.

:func:`writing` runs a stage against its output: one writer at a time (:class:`Lease`), the
settings recorded, and on ``overwrite`` the new output written beside the old one (in
``_work/next-<token>/``) and swapped in only once it is complete, so a failed run leaves the old
output as it was; a swap cut short is finished by the next run. A new output that meets bad input
(an :class:`~activeft.errors.ActiveftError`) is removed again; other failures keep the work for
``resume``. Empty outputs and filesystem roots are refused before anything is written.

The same settings diff (:func:`changes`) serves resume and the pipeline's
stage records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ActiveftError, OutputExistsError, ParameterError
from ..version import __version__
from . import storage
from .lease import EXPIRY_ENV, LEASE, Lease  # noqa: F401  (part of the protocol's surface)

log = logging.getLogger(__name__)
RECORD = "_work/config.json"
FILES = "_work/files.json"
SWAP = "_work/swap.json"
NEW, RESUME, FINISHED, REPLACE = "new", "resume", "finished", "replace"



@dataclass(frozen=True)
class Kind:
    """What a stage's output is: its ``name`` in records and messages ("selection"), its ``marker``
    (written last) and ``owns``, a pattern of the names the stage writes beside its ``_work/`` (known
    also for outputs that have no ``files.json`` yet: unfinished, or written before it existed);
    ``retry`` ends the refusal of a changed config (what the user can do instead)."""

    name: str
    marker: str
    owns: str = "(?!)"
    retry: str = "use another --output or --overwrite"


_MACHINERY = re.compile(r"_work/(lease\.json(\.lock)?|swap\.json|next-[0-9a-f]{32}(/.*)?)")
_TEMP = re.compile(r"(.*/)?\.(tmp-[0-9a-f]{32}-[^/]*|write-probe-[0-9a-f]{32})")


def header() -> dict:
    """The fields every marker and record starts with."""
    return {"activeft_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def changes(before: dict, now: dict) -> str | None:
    """``"(k1, k2): k1=old -> new, ..."`` for the keys whose values differ; None when none do."""
    keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if not keys:
        return None
    return f"({', '.join(keys)}): " + ", ".join(f"{k}={before.get(k)!r} -> {now.get(k)!r}" for k in keys)


class _Inventory:
    """What an output holds, seen by ``stage``: its files (lease machinery aside), its records, and
    which files that stage did not write."""

    def __init__(self, output: str, kind: Kind):
        stage, marker = kind.name, kind.marker
        self.keys = [k for k, _ in storage.list_files(output) if not _MACHINERY.fullmatch(k)]
        present = set(self.keys)
        record = storage.read_json(storage.join(output, RECORD)) if RECORD in present else {}
        self.files = storage.read_json(storage.join(output, FILES)) if FILES in present else {}
        named = record.get("stage") or self.files.get("stage")
        self.settings = {k: v for k, v in record.items() if k != "stage"}
        self.ours = named == stage
        own = re.compile(kind.owns)
        # written before records existed: its marker (or, without one given, a name the stage writes)
        self.legacy = named is None and (marker in present if marker else any(own.fullmatch(k) for k in present))
        recorded = set(self.files.get("files", [])) if self.ours else set()

        def mine(k: str) -> bool:
            if self.ours and (k.startswith("_work/") or k in recorded or _TEMP.fullmatch(k)):
                return True
            return (self.ours or self.legacy) and (k == marker or bool(own.fullmatch(k)))

        self.foreign = [k for k in self.keys if not mine(k)]
        self.finished = marker in present


def _decide(output: str, kind: Kind, settings: dict, resume, overwrite, verb: str,
            held: Lease | None = None) -> tuple[str, _Inventory]:
    stage = kind.name
    if resume and overwrite:
        raise ParameterError("the 'resume' and 'overwrite' parameters exclude each other (pick one)")
    if storage.is_file(output):
        raise OutputExistsError(f"output {output} is a file, not a directory")
    holder = Lease.holder(output, held)
    if holder:
        raise OutputExistsError(holder)
    inv = _Inventory(output, kind)
    if not inv.keys:
        return NEW, inv
    if overwrite:
        if not (inv.ours or inv.legacy):
            article = "an" if stage[0] in "aeiou" else "a"
            raise OutputExistsError(f"output {output} is not empty and is not {article} {stage}; "
                                    "refusing to overwrite it")
        if inv.foreign:
            more = f" (and {len(inv.foreign) - 1} more)" if len(inv.foreign) > 1 else ""
            raise OutputExistsError(f"output {output} holds {inv.foreign[0]!r}{more}, which no {stage} run wrote; "
                                    "--overwrite replaces only what activeft wrote: move it away or use another "
                                    "--output")
        return REPLACE, inv
    if not resume:
        hint = "pass --overwrite to replace it" if resume is None else \
            "pass --resume to continue it or --overwrite to replace it"
        raise OutputExistsError(f"output {output} is not empty; {hint}")
    if not inv.ours:
        raise OutputExistsError(f"output {output} has no {stage} to resume")
    diff = None if settings is None else changes(inv.settings, settings)
    if diff:
        raise OutputExistsError(f"{stage} {output} was {verb} with a different config {diff}; "
                                f"{kind.retry}")
    if not inv.finished:
        return RESUME, inv
    if inv.files and settings is not None:
        diff = changes(inv.files.get("settings", {}), settings)
        if diff:
            raise OutputExistsError(f"{stage} {output} holds the result of a run with a different config {diff}; "
                                    f"{kind.retry}")
        missing = sorted(set(inv.files.get("files", [])) - set(inv.keys))
        if missing:  # a file of the result was removed: the run continues from its work and writes it again
            log.warning("%s %s lacks %s (listed in %s): resuming it", stage, output, missing[0], FILES)
            return RESUME, inv
    return FINISHED, inv


def check(output: str, kind: Kind, settings: dict, *, resume: bool | None = False, overwrite: bool = False,
          verb: str = "started") -> str:
    """What a run of a stage writing ``kind`` with ``settings`` may do with ``output``: :data:`NEW`, :data:`RESUME`,
    :data:`FINISHED` (resume found the marker) or :data:`REPLACE` (overwrite); refused otherwise,
    also while another run holds the output's lease. ``resume=None``: the stage has no resume;
    ``settings=None``: an early check, before the settings are known (they are compared later)."""
    return _decide(storage.output_uri(output), kind, settings, resume, overwrite, verb)[0]


def write_marker(uri: str, info: dict) -> dict:
    """Write a stage's marker (last): :func:`header`, then ``info``; returns what was written."""
    info = {**header(), **info}
    storage.write_json(uri, info)
    return info


# ---- writing an output -----------------------------------------------------------------------------------------------


class Output:
    """A stage's output while :func:`writing` holds it.

    ``uri`` is where the result lives; ``dir`` is where this run writes (``uri`` itself, or the staging
    directory beside the old output on replace); :meth:`commit` records the files, writes the marker and,
    on replace, swaps the new output in.
    """

    def __init__(self, uri, kind: Kind, settings, state, held: Lease | None, inventory: _Inventory | None):
        self.uri, self.kind, self.settings, self.state = uri, kind, settings, state
        self.stage, self.marker = kind.name, kind.marker
        self.lease, self.inventory = held, inventory
        self.finished = state == FINISHED
        self.dir = storage.join(uri, "_work", f"next-{held.token}") if state == REPLACE else uri
        self.committed = False

    def join(self, *parts: str) -> str:
        return storage.join(self.dir, *parts)

    def commit(self, info: dict | None = None) -> dict | None:
        """Finish the run: ``_work/files.json``, then the marker (:func:`write_marker` with ``info``, unless
        the stage wrote it already), then, on replace, the swap. Returns the marker's content."""
        if self.uri is None:
            return info
        self.lease.renew()
        foreign = set(self.inventory.foreign) if self.state != REPLACE else set()
        keys = {k for k, _ in storage.list_files(self.dir)
                if not k.startswith("_work/") and not _TEMP.fullmatch(k) and k not in foreign}
        storage.write_json(self.join(FILES), {**header(), "stage": self.stage, "settings": self.settings,
                                              "files": sorted(keys | {self.marker})})
        if info is not None:
            info = write_marker(self.join(self.marker), info)
        if self.state == REPLACE:
            self._swap()
        self.committed = True
        return info

    def _swap(self) -> None:
        new = [k for k, _ in storage.list_files(self.dir)]
        now = _Inventory(self.uri, self.kind)
        foreign = set(now.foreign)  # appeared during the run: not ours to remove
        old = [k for k in now.keys if k not in foreign and not _MACHINERY.fullmatch(k)]
        storage.write_json(storage.join(self.uri, SWAP), {
            "next": self.dir.rsplit("/", 1)[1], "marker": self.marker, "files": new,
            "remove": sorted(set(old) - set(new))})
        _roll_forward(self.uri)

    def _abort(self, error: BaseException, existed: bool, keep_on: tuple) -> None:
        if self.committed or self.uri is None or isinstance(error, storage.StorageUnavailable):
            return  # (an unreachable store: the next run drops the staging)
        try:
            if self.state == REPLACE:  # the old output was never touched
                storage.delete(self.dir)
            elif self.state == NEW and isinstance(error, ActiveftError) and not isinstance(error, keep_on):
                self.lease.stop_heartbeat()  # (its file goes too)
                storage.delete(self.uri)  # bad input found late: the output was empty before this run
                if existed and not storage.is_remote(self.uri):
                    storage.makedirs(self.uri)
        except Exception as e:
            log.warning("could not clean up %s after the failure: %s", self.dir, storage._first_line(e))


def _roll_forward(uri: str) -> None:
    """Carry out the swap recorded in ``_work/swap.json`` (idempotent: a swap cut short is finished)."""
    journal = storage.read_json(storage.join(uri, SWAP))
    src = storage.join(uri, "_work", journal["next"])
    marker = journal["marker"]
    storage.delete(storage.join(uri, marker))  # the output reads as unfinished while it changes
    for key in journal["remove"]:
        storage.delete(storage.join(uri, key))
    for key in sorted(journal["files"], key=lambda k: (k == marker, k == FILES, k)):  # marker last
        if storage.exists(storage.join(src, key)):
            storage.move(storage.join(src, key), storage.join(uri, key))
    storage.delete(src)
    storage.delete(storage.join(uri, SWAP))
    if not storage.is_remote(uri):  # directories the removed files leave empty
        for root, dirs, files in os.walk(storage.join(uri, "_work"), topdown=False):
            if not dirs and not files:
                with contextlib.suppress(OSError):
                    os.rmdir(root)


def _recover(uri: str) -> None:
    """Under the lease: finish a swap a dead run left half done, and drop its abandoned staging."""
    if storage.exists(storage.join(uri, SWAP)):
        log.warning("finishing the replacement of %s that an earlier run left half done", uri)
        _roll_forward(uri)
    import pyarrow.fs as pafs

    fs, path = storage.resolve(storage.join(uri, "_work"))
    with storage._remote_errors(uri):
        entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    for i in entries:
        if i.type == pafs.FileType.Directory and re.fullmatch(r"next-[0-9a-f]{32}", i.base_name):
            storage.delete(storage.join(uri, "_work", i.base_name))


@contextlib.contextmanager
def writing(output: str | None, kind: Kind, settings: dict, *, resume: bool | None = False,
            overwrite: bool = False, verb: str = "started", keep_on: tuple = ()) -> Iterator[Output]:
    """Run a stage against ``output``: :func:`check` it (refusing before any write), take its lease,
    record the settings and yield the :class:`Output` to write into; the stage ends with
    :meth:`Output.commit`. ``output=None``: nothing is written (``commit`` returns its argument).

    On failure: a replace discards its staging (the old output stays as it was); a new output that
    met an :class:`~activeft.errors.ActiveftError` (except ``keep_on`` types and object-store outages) is
    removed again; otherwise the work stays for ``resume``.
    """
    if output is None:
        yield Output(None, kind, settings, NEW, None, None)
        return
    output = storage.output_uri(output)
    _decide(output, kind, settings, resume, overwrite, verb)  # refused before anything is written
    existed = storage.exists(output)
    with Lease.take(output, kind.name) as held:
        _recover(output)
        state, inv = _decide(output, kind, settings, resume, overwrite, verb, held)
        out = Output(output, kind, settings, state, held, inv)
        if state != FINISHED:
            storage.write_json(out.join(RECORD), {"stage": kind.name, **settings})
        try:
            yield out
        except BaseException as e:
            out._abort(e, existed, keep_on)
            raise
        if state == REPLACE and not out.committed:  # nothing was committed: the old output stays
            storage.delete(out.dir)
