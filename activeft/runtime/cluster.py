"""Connecting to Ray: the cluster ``RAY_ADDRESS`` (or an explicit ``address``) names, otherwise a new
local instance. Never another Ray that happens to run on this host (``ray.init()`` alone would join
a ``ray start`` head it finds there). No code path differs between the two.

A failed Ray Data task's full stack goes to Ray Data's log file (``<session>/logs/ray-data``), not to
the console, where the command's error is one line (``ACTIVEFT_DEBUG=1`` keeps Ray's output as is)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ActiveftError

log = logging.getLogger(__name__)


def init(address: str | None = None) -> None:
    """Start or join Ray unless this process is connected already; log which, with the address.

    ``address`` (else ``RAY_ADDRESS``): ``host:port``, ``ray://host:port`` or ``auto`` (the Ray
    this host runs) joins that cluster; unset, empty or ``local`` starts a local instance.
    """
    import ray

    if ray.is_initialized():
        return
    named = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    join = named not in ("", "local")
    try:
        ray.init(address=named if join else "local", logging_level=logging.WARNING, log_to_driver=True)
    except ConnectionError as e:
        raise ActiveftError(f"cannot connect to the Ray cluster at {named} "
                            f"({'--address' if address else 'RAY_ADDRESS'}): {str(e).strip().splitlines()[0]}") from e
    _errors_to_log_file()
    res = ray.cluster_resources()
    try:
        where = ray.get_runtime_context().gcs_address
    except Exception:  # Ray Client (ray://) has no GCS address of its own
        where = named
    log.info("Ray: %s at %s with %g CPUs, %g GPUs, %.1f GiB memory",
             f"joined the cluster {named!r}" if join else "started a local instance", where, res.get("CPU", 0),
             res.get("GPU", 0), res.get("memory", 0) / 2**30)


def working_dir_copy() -> str | None:
    """The copy of a Ray job's working directory that this process runs in, or None.

    ``ray job submit --working-dir DIR`` uploads DIR (less what its ``.gitignore`` names) and starts the
    entrypoint in an unpacked copy, ``<temp dir>/session_*/runtime_resources/working_dir_files/<package>/``,
    which Ray deletes later; a ``local://`` working dir is used in place and is no copy. The rule: the
    current directory, symlinks resolved, lies under ``working_dir_files/<package>`` two levels below a
    ``session_*`` directory (where Ray's working_dir plugin unpacks; the middle name is configurable).
    """
    parts = Path(os.getcwd()).resolve().parts
    for i in range(len(parts) - 3):
        if parts[i].startswith("session_") and parts[i + 2] == "working_dir_files":
            return str(Path(*parts[:i + 4]))
    return None


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def _errors_to_log_file() -> None:
    if os.environ.get("ACTIVEFT_DEBUG"):
        return
    try:
        import ray.data  # noqa: F401  (configures its loggers)
    except ImportError:
        return
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler" and not any(isinstance(f, _BelowError)
                                                                        for f in handler.filters):
            handler.addFilter(_BelowError())


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))
