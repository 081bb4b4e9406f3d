"""MaxHerding (Bae, Noh & Sutherland, ECCV 2024, arXiv 2407.12212), following the official code.

Official code: github.com/BorealisAI/uherding, ``deep-al/pycls/al/herding.py`` (``Herding`` with
the ``rbf`` kernel). Greedily pick the row that most raises the kernel coverage
``sum_x max_{s in S} k(x, s)``, ``k(x, s) = exp(-(|x - s| / h)^2)`` on unit-norm features
(ties to the first row); labeled rows count in ``S`` from the start.

Here the kernel of a row is kept on its ``neighbours`` nearest rows (and itself; by default
``8 N / budget`` within the engine's edge budget) and taken as 0 beyond
(:func:`activeft.engine.coverage_graph`; ``info`` reports the largest weight cut off), where the
official code holds the dense N x N kernel of at most 35,000 shuffled candidates; ties go to the
smaller row. Keeping 8 rather than 2 ``N / budget`` rows was chosen on validation splits
(``benchmarks/RESULTS.md``). ``bandwidth`` h: given (the official scripts pass 1.0), or by
default the budget radius (median distance to the ``ceil(N / budget)``-th nearest row), so that
it follows the budget. Cost: the graph (:func:`activeft.engine.knn_graph`), then O(N m) +
O(B m^2) for the picks.
"""

from __future__ import annotations

import logging

import torch

from ..engine import coverage_graph, generator, greedy_cover
from ..params import Param, number, optional
from .registry import Result, Selector, graph_params, register_selector

log = logging.getLogger(__name__)
REACH = 8  # default neighbours per row: REACH x pool / budget


@register_selector
class MaxHerding(Selector):
    """MaxHerding: greedy maximisation of the Gaussian-kernel coverage of the pool."""

    name = "herding"
    params = {
        "bandwidth": Param(None, optional(number(0, strict=True)), "Kernel bandwidth h in exp(-(d / h)^2) "
                                                                  "(official scripts: 1.0); None: the budget "
                                                                  "radius."),
        **graph_params(REACH),
    }
    test_seed_free = True  # the graph is exact on pools up to `candidates` rows; picks are greedy

    def fit(self, pool, comm, budget, exclude, checkpoints) -> Result:
        rows, d2, radius = coverage_graph(pool, comm, budget, self.neighbours, self.candidates, self.seed, REACH)
        h = self.bandwidth or radius
        w = torch.where(rows >= 0, torch.exp(-d2.double() / (h * h)), 0.0)
        cut = float(comm.all_gather(w[:, -1].max().reshape(1) if len(w) else w.new_zeros(1)).max())
        if cut > 0.1 and comm.rank == 0:  # by design at the default reach: a debug line (selection.json has it)
            log.debug("herding: the kernel (h = %.3g) is still up to %.2f at the %d-th neighbour, where the graph "
                      "cuts it (pass neighbours= for more)", h, cut, rows.shape[1])
        picked, gains = greedy_cover(pool, comm, rows, w, budget, generator(self.seed), exclude, tag="herding")
        return Result(picked.numpy(), {"gain": gains.numpy()},
                      {"bandwidth": h, "budget_radius": radius, "neighbours": rows.shape[1], "kernel_cut": cut})
