"""The K-Means selection baseline: k = budget clusters of the pool (:func:`activeft.engine.kmeans`),
then each centroid's nearest distinct sample (:func:`activeft.engine.greedy_unique`).

``restarts`` runs k-means that many times from different seedings and keeps the lowest final inertia
(scikit-learn's ``n_init``). On the Fashion-MNIST validation split (PCA-64, 24 seeds) the best of 5
scored 0.0 to +1.1 points over one run with the selected labels alone and -0.1 to +2.9 with label
propagation, at 1 to 6 picks per class, for 5 times the cost (``benchmarks/RESULTS.md``): one run
stays the default."""

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
        "restarts": Param(1, integer(1), "k-means runs from different seedings; the lowest inertia is kept "
                                         "(more than 1: a stopped run starts k-means again, no checkpoints)."),
    }
    test_params = {"iterations": 20}

    def fit(self, pool, comm, budget, exclude, checkpoints) -> Result:
        runs = [kmeans(pool, comm, budget, iterations=self.iterations, tol=self.tol, init=self.init,
                       seed=self.seed * self.restarts + r, exclude=exclude,
                       checkpoints=checkpoints if self.restarts == 1 else None) for r in range(self.restarts)]
        best = min(range(self.restarts), key=lambda r: runs[r][1][-1])  # the first of equal inertias
        centroids, history = runs[best]
        c = torch.nn.functional.normalize(centroids, dim=1)
        rows, sims = greedy_unique(pool, comm, c, taken=exclude)
        return Result(rows.numpy(), {"centroid": np.arange(budget), "similarity": sims.numpy()},
                      {"inertia_history": history, "iterations_run": len(history),
                       **({"restart_inertias": [h[-1] for _, h in runs], "restart_kept": best}
                          if self.restarts > 1 else {})})
