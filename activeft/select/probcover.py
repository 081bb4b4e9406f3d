"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022, arXiv 2205.11320), following the official code.

Official code: github.com/avihu111/TypiClust, ``deep-al/pycls/al/prob_cover.py``. On unit-norm
features, every row ``x`` has the ball ``{y : |x - y| < delta}`` (itself included); greedily pick
the row whose ball holds the most rows not yet covered (``degrees.argmax()``: ties to the first
row), then mark its ball covered. Rows already labeled cover their balls from the start.

Here each ball is cut to the row's ``neighbours`` nearest rows (:func:`activeft.engine.coverage_graph`;
a warning gives the share of balls that reach that cut), labeled rows are never picked again, and
once every row is covered the remaining picks go farthest-first, where the official code appends
its first row again and again (:func:`activeft.engine.greedy_cover`). ``delta``: given; or by the
paper's purity rule (the largest radius of a grid whose balls are pure, all one k-means label of
``classes`` clusters, for at least ``purity`` of the rows; grid ``linspace(0.05, 1, 20)`` as in
BorealisAI/uherding ``compute_purity``); or, by default, the budget radius: the median distance
of a row to its ``ceil(N / budget)``-th nearest row, so that the radius follows the budget.
Cost: the graph (:func:`activeft.engine.knn_graph`), then O(N m) + O(B m^2) for the picks.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..engine import FlatIndex, all_sum, coverage_graph, generator, greedy_cover, kmeans
from ..errors import ParameterError
from ..params import Param, integer, number, optional
from .registry import Result, Selector, graph_params, register_selector

log = logging.getLogger(__name__)
REACH = 2  # default neighbours per row: REACH x pool / budget
GRID = np.linspace(0.05, 1.0, 20)  # purity radii, as BorealisAI/uherding compute_purity


def purity_radius(pool, comm, rows, d2, classes: int, alpha: float, seed: int) -> float:
    """The largest radius of :data:`GRID` whose balls are pure for at least ``alpha`` of the rows
    (pseudo-labels: k-means with ``classes`` clusters); a ball past the graph's cut counts as pure
    when its listed rows are."""
    centroids, _ = kmeans(pool, comm, classes, iterations=100, init="kmeans||", seed=seed, tag="probcover purity")
    label = FlatIndex(centroids, "l2", precision=pool.precision).search(pool.x, scores=False)[0]
    every = pool.whole(label, comm)
    other = (every[rows.clamp(min=0)] != label[:, None]) & (rows >= 0)
    first_other = torch.where(other, d2, torch.inf).amin(1)  # squared distance to the nearest other label
    passing = [r for r in GRID if all_sum(float((first_other >= r * r).sum()), comm, pool.device) >= alpha * pool.size]
    if not passing:
        raise ParameterError(f"probcover: no radius from {GRID[0]:g} up keeps {alpha:g} of the balls pure; "
                             "pass delta")
    return float(passing[-1])


@register_selector
class ProbCover(Selector):
    """ProbCover: greedy max coverage of the pool by balls of radius delta."""

    name = "probcover"
    params = {
        "delta": Param(None, optional(number(0, strict=True)), "Ball radius (Euclidean on unit vectors); None: "
                                                              "the purity rule when purity is set, else the "
                                                              "budget radius."),
        "purity": Param(None, optional(number(0, strict=True, maximum=1)), "The paper's rule: the largest radius "
                                                                         "with this share of pure balls (0.95 in "
                                                                         "the paper)."),
        "classes": Param(10, integer(2), "k-means clusters that label the balls for the purity rule."),
        **graph_params(REACH),
    }
    test_seed_free = True  # the graph is exact on pools up to `candidates` rows; picks are greedy

    def fit(self, pool, comm, budget, exclude, checkpoints) -> Result:
        rows, d2, radius = coverage_graph(pool, comm, budget, self.neighbours, self.candidates, self.seed, REACH)
        delta = (self.delta if self.delta is not None else
                 purity_radius(pool, comm, rows, d2, self.classes, self.purity, self.seed) if self.purity else radius)
        inside = (d2 < delta * delta) & (rows >= 0)
        cut = all_sum(float(inside[:, -1].sum()), comm, pool.device) / pool.size
        if cut > 0.01 and comm.rank == 0:
            log.warning("probcover: %.0f%% of the balls of radius %.3g hold more than the %d rows kept; their "
                        "degrees are cut (pass neighbours= for more)", 100 * cut, delta, rows.shape[1])
        picked, gains = greedy_cover(pool, comm, torch.where(inside, rows, -1), inside.float(), budget,
                                     generator(self.seed), exclude, tag="probcover")
        return Result(picked.numpy(), {"degree": gains.numpy()},
                      {"delta": delta, "budget_radius": radius, "neighbours": rows.shape[1], "balls_cut": cut})
