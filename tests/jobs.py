"""Jobs that tests run on Ray Train workers; importable there because conftest puts tests/ on
the workers' PYTHONPATH (a test module itself must not define them)."""

import torch

from activeft.engine import greedy_unique


def mapping_job(centroids, candidates, pool, comm, checkpoints):
    rows, _ = greedy_unique(pool, comm, centroids, candidates=candidates)
    return {"rows": rows.tolist()}


def gather_job(pool, comm, checkpoints):
    return {"offsets": comm.all_gather_object(pool.offset), "sizes": comm.all_gather_object(len(pool.x)),
            "threads": torch.get_num_threads()}
