"""FDS: k-center greedy on the embeddings (:func:`activeft.engine.k_center_greedy`), as
``farthest_distance_sample`` in the official ActiveFT code (``sample_tools/utils.py``)."""

from __future__ import annotations

from ..engine import generator, k_center_greedy
from .registry import Result, Selector, register_selector


@register_selector
class FDS(Selector):
    """Farthest-distance sampling (k-center greedy) on the embeddings."""

    name = "fds"
    params = {}

    def fit(self, pool, comm, budget, exclude, checkpoints) -> Result:
        rows = k_center_greedy(pool, comm, budget, generator(self.seed), exclude, checkpoints)
        return Result(rows.numpy())
