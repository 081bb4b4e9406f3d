"""Jobs that tests run on Ray Train workers; importable there because conftest puts tests/ on
the workers' PYTHONPATH (a test module itself must not define them)."""

import numpy as np
import torch

from activeft.engine import Pool, greedy_unique
from activeft.select import get_selector


def mapping_job(centroids, candidates, pool, comm, checkpoints):
    rows, _ = greedy_unique(pool, comm, centroids, candidates=candidates)
    return {"rows": rows.tolist()}


def gather_job(pool, comm, checkpoints):
    return {"offsets": comm.all_gather_object(pool.offset), "sizes": comm.all_gather_object(len(pool.x)),
            "threads": torch.get_num_threads()}


def selectors_job(methods, budget, seed, pool, comm, checkpoints):
    """Each method's rows and histories (loss, inertia), fitted with its ``test_params`` in one worker group."""
    out = {}
    for method in methods:
        cls = get_selector(method)
        result = cls(seed=seed, **cls.test_params).fit(pool, comm, budget, torch.zeros(0, dtype=torch.long),
                                                         checkpoints)
        out[method] = {"rows": np.asarray(result.rows).tolist(),
                       "history": {k: v for k, v in result.info.items() if k.endswith("_history")}}
    return out


def each_job(jobs, pool, comm, checkpoints):
    """Several jobs in one worker group (one start-up): their results in order."""
    return [job(pool, comm, checkpoints) for job in jobs]


def transformed_job(transform, job, pool, comm, checkpoints):
    """``job`` on the pool's rows through ``transform``, as the runner's ``transform`` loads them."""
    return job(Pool(transform(pool.x), pool.offset, pool.size, pool.precision), comm, checkpoints)
