"""Random selection: ``budget`` rows uniformly without replacement (seeded), the baseline every
paper reports."""

from __future__ import annotations

from ..engine import generator, sample_rows
from .registry import Result, Selector, register_selector


@register_selector
class Random(Selector):
    """Uniform random sample of the pool (excluded rows never chosen)."""

    name = "random"
    params = {}

    def fit(self, pool, comm, budget, exclude, checkpoints) -> Result:
        rows = sample_rows(pool.size, budget, generator(self.seed), exclude)
        return Result(rows.numpy())
