"""The stage protocol: how every stage treats its output, in one place.

An output (a directory or prefix) belongs to one stage. When a run starts, ``_work/config.json``
records the stage and the settings that define its result; the stage's *marker* (``selection.json``,
``_manifest.json``, ``metrics.json``, ...) is written last and carries :func:`header`, so an
output without its marker is unfinished. Given an output, :func:`check` decides, writing nothing:

- empty or absent: a new run;
- non-empty, neither ``resume`` nor ``overwrite``: refused;
- ``overwrite``: only an output of the same stage (its marker or its record), never a foreign
  directory; it is deleted by :func:`start`, once the caller has validated its input;
- ``resume``: only an output of the same stage started with the same settings (a change is
  refused, naming it); a finished one is reported as such.

The same settings diff (:func:`changes`) serves resume, the loop's state and the pipeline's
stage records.
"""

from __future__ import annotations

import contextlib
import time

from . import __version__, storage
from .errors import ActiveftError, OutputExistsError, ParameterError

RECORD = "_work/config.json"
NEW, RESUME, FINISHED, REPLACE = "new", "resume", "finished", "replace"


def header() -> dict:
    """The fields every marker and record starts with."""
    return {"activeft_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def changes(before: dict, now: dict) -> str | None:
    """``"(k1, k2): k1=old -> new, ..."`` for the keys whose values differ; None when none do."""
    keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if not keys:
        return None
    return f"({', '.join(keys)}): " + ", ".join(f"{k}={before.get(k)!r} -> {now.get(k)!r}" for k in keys)


def check(output: str, stage: str, settings: dict, *, marker: str, resume: bool | None = False,
          overwrite: bool = False, verb: str = "started") -> str:
    """What a run of ``stage`` with ``settings`` may do with ``output``: :data:`NEW`, :data:`RESUME`,
    :data:`FINISHED` (resume found the marker) or :data:`REPLACE` (overwrite); refused otherwise.
    ``resume=None``: the stage has no resume."""
    if resume and overwrite:
        raise ParameterError("the 'resume' and 'overwrite' parameters exclude each other (pick one)")
    if storage.is_file(output):
        raise OutputExistsError(f"output {output} is a file, not a directory")
    if not storage.has_entries(output):
        return NEW
    record = storage.join(output, RECORD)
    before = storage.read_json(record) if storage.exists(record) else {}
    ours = before.get("stage") == stage
    if overwrite:
        if not (ours or storage.exists(storage.join(output, marker))):
            article = "an" if stage[0] in "aeiou" else "a"
            raise OutputExistsError(f"output {output} is not empty and is not {article} {stage}; "
                                    "refusing to overwrite it")
        return REPLACE
    if not resume:
        hint = "pass --overwrite to replace it" if resume is None else \
            "pass --resume to continue it or --overwrite to replace it"
        raise OutputExistsError(f"output {output} is not empty; {hint}")
    if not ours:
        raise OutputExistsError(f"output {output} has no {stage} to resume")
    diff = changes({k: v for k, v in before.items() if k != "stage"}, settings)
    if diff:
        raise OutputExistsError(f"{stage} {output} was {verb} with a different config {diff}; "
                                "use another --output or --overwrite")
    return FINISHED if storage.exists(storage.join(output, marker)) else RESUME


def start(output: str, stage: str, settings: dict, state: str) -> None:
    """Begin (or continue) a run checked by :func:`check`: replace the old output if asked, prove
    the output writable and record the settings."""
    if state == REPLACE:
        storage.delete(output)
    storage.check_writable(output)
    storage.write_json(storage.join(output, RECORD), {"stage": stage, **settings})


def prepare(output: str, stage: str, settings: dict, *, marker: str, resume: bool = False,
            overwrite: bool = False) -> bool:
    """:func:`check` then :func:`start`; True when a resumed run had already finished."""
    state = check(output, stage, settings, marker=marker, resume=resume, overwrite=overwrite)
    if state == FINISHED:
        return True
    start(output, stage, settings, state)
    return False


def write_marker(uri: str, info: dict) -> dict:
    """Write a stage's marker (last): :func:`header`, then ``info``; returns what was written."""
    info = {**header(), **info}
    storage.write_json(uri, info)
    return info


@contextlib.contextmanager
def removed_on_user_error(uri: str | None):
    """Remove ``uri`` again if it was empty or absent before and the block raises an
    :class:`ActiveftError` (bad input found late, e.g. NaN rows met while loading)."""
    fresh = uri is not None and not storage.has_entries(uri)
    try:
        yield
    except ActiveftError:
        if fresh:
            storage.delete(uri)
        raise
