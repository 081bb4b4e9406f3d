"""The K-Means selection baseline: k = budget clusters of the pool (:func:`activeft.engine.kmeans`),
then each centroid's nearest distinct sample (:func:`activeft.engine.greedy_unique`)."""

from __future__ import annotations

import numpy as np
import torch

from ..engine import DEFAULT_SEEDING, SEEDINGS, greedy_unique, kmeans
from ..params import Param, integer, number, one_of
from .registry import Result, Selector, register_selector


@register_selector
class KMeans(Selector):
    """K-Means baseline: k = budget clusters of the pool, then each centroid's nearest distinct sample."""

    name = "kmeans"
    params = {
        "iterations": Param(100, integer(1), "Maximum Lloyd iterations."),
        "init": Param(DEFAULT_SEEDING, one_of(*SEEDINGS), "Seeding: k-means|| (Bahmani et al. 2012; a few passes "
                                                           "whatever the budget), k-means++ (one pass per "
                                                           "centroid) or uniform rows."),
        "tol": Param(1e-4, number(0), "Stop when the inertia improves by less than this fraction."),
    }
    test_params = {"iterations": 20}

    def fit(self, pool, comm, budget, exclude, checkpoints) -> Result:
        centroids, history = kmeans(pool, comm, budget, iterations=self.iterations, tol=self.tol, init=self.init,
                                    seed=self.seed, exclude=exclude, checkpoints=checkpoints)
        c = torch.nn.functional.normalize(centroids, dim=1)
        rows, sims = greedy_unique(pool, comm, c, taken=exclude)
        return Result(rows.numpy(), {"centroid": np.arange(budget), "similarity": sims.numpy()},
                      {"inertia_history": history, "iterations_run": len(history)})
