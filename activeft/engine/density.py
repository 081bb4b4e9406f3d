"""Per-row neighbourhood scores of the sharded pool: uniqueness, density and the outliers.

As FiftyOne Brain's uniqueness and representativeness, on the engine's neighbour graph
(:func:`~.graph.knn_graph`: exact up to ``candidates`` rows, an inverted file beyond): a row's
*uniqueness* is the Euclidean distance to its ``k``-th nearest other row (unit vectors: in [0, 2]),
its *density* the mean cosine similarity to its ``k`` nearest other rows. The *outliers* at a fraction
``q`` are the ``floor(q N)`` rows of lowest density (ties to the smaller row): what ``select
--drop-outliers q`` never picks and what ``activeft scores`` flags, from one computation.
"""

from __future__ import annotations

import math

import torch

from .graph import EXACT_UP_TO, knn_graph
from .pool import Collectives, Pool

K = 10  # neighbours of the scores by default (FiftyOne's representativeness uses 5 to 25)


def neighbourhood(pool: Pool, comm: Collectives, k: int = K, candidates: int = EXACT_UP_TO,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uniqueness, density)`` of every row of the pool (float64, CPU, on every rank); ``k`` is capped
    at ``N - 1``."""
    k = min(k, pool.size - 1)
    if k < 1:
        raise ValueError(f"scores need a pool of at least 2 rows; got {pool.size}")
    _, d2 = knn_graph(pool, comm, k, candidates, seed)
    d2 = d2.double().clamp(min=0)
    return pool.whole(d2[:, k - 1].sqrt(), comm).cpu(), pool.whole((1 - d2 / 2).mean(1), comm).cpu()


def lowest(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """The sorted rows of the ``floor(fraction x len(values))`` lowest ``values`` (the whole pool's, on
    every rank), ties to the smaller row."""
    n = math.floor(fraction * len(values) + 1e-9)  # 0.29 x 100 is 28.999...
    order = torch.sort(values.double().cpu(), stable=True).indices  # equal values: the smaller row first
    return torch.sort(order[:n]).values
