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
    res = ray.cluster_resources()
    log.info("Ray: %s with %g CPUs, %g GPUs, %.1f GiB memory", "cluster at " + address if address else
             "local instance", res.get("CPU", 0), res.get("GPU", 0), res.get("memory", 0) / 2**30)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))
