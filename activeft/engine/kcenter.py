"""k-center greedy / farthest-point sampling (FDS), distributed.

As ``farthest_distance_sample`` in the official ActiveFT code (``sample_tools/utils.py``):
start from one random row (or from the given centres, e.g. already-labeled rows), then
repeatedly take the row farthest (Euclidean) from everything chosen so far. Each worker keeps
the distance of its rows to the nearest chosen centre; a step all-gathers the per-worker
maxima (:func:`merge_topk`: ties to the smaller row) and broadcasts the winner. Distances are exact
(:func:`~.search.exact_scores`). O(N x B x D) time, O(N) memory, never an N x N matrix.
"""

from __future__ import annotations

import logging

import torch

from .pool import Collectives, Pool, log_every, merge_topk, sample_rows
from .search import exact_scores, nearest

log = logging.getLogger(__name__)


def k_center_greedy(pool: Pool, comm: Collectives, k: int, g: torch.Generator, initial=(),
                    checkpoints=None, tag: str = "fds") -> torch.Tensor:
    """``k`` new global rows, farthest-first from ``initial`` (or from one random row)."""
    initial = torch.as_tensor(list(initial), dtype=torch.long)
    state = checkpoints.load() if checkpoints else None
    chosen = [] if state is None else state["rows"].tolist()
    if state is not None:
        g.set_state(state["generator"])
    centres = torch.cat([initial, torch.tensor(chosen, dtype=torch.long)])
    if len(centres) == 0:
        chosen = sample_rows(pool.size, 1, g).tolist()
        centres = torch.tensor(chosen)
    dist = nearest(pool.x, pool.gather_rows(centres, comm), "l2", precision=pool.precision)[1].to(pool.device)
    _, local = pool.local(centres)
    dist[local] = -torch.inf  # chosen rows never again (duplicates of them stay at 0)
    every = log_every(k)
    while len(chosen) < k:
        i = int(torch.argmax(dist))
        _, best = merge_topk(dist[i].reshape(1, 1), torch.tensor([[pool.offset + i]]), comm, 1)
        row = int(best[0, 0])
        chosen.append(row)
        c = pool.gather_rows(torch.tensor([row]), comm)
        dist = torch.minimum(dist, exact_scores(pool.x, c, None, "l2"))
        _, local = pool.local(torch.tensor([row]))
        dist[local] = -torch.inf
        if comm.rank == 0 and (len(chosen) % every == 0 or len(chosen) == k):
            log.info("%s: %d/%d centres", tag, len(chosen), k)
        if checkpoints and checkpoints.due(len(chosen)):
            checkpoints.save({"rows": torch.tensor(chosen), "generator": g.get_state()}, {"selected": len(chosen)})
    return torch.tensor(chosen[:k], dtype=torch.long)
