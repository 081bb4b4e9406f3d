"""Connecting to Ray: an existing cluster when ``RAY_ADDRESS`` is set (``ray job submit`` sets
it), otherwise a local instance started on demand. No code path differs between the two."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init() -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address or None, logging_level=logging.WARNING, log_to_driver=True)
    log.info("Ray: %s (%s)", "cluster at " + address if address else "local instance",
             ", ".join(f"{k}={v:g}" for k, v in sorted(ray.cluster_resources().items())
                       if k in ("CPU", "GPU", "memory")))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))
