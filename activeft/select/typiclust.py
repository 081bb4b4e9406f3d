"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022, arXiv 2202.02794), following the official code.

Official code: github.com/avihu111/TypiClust, ``deep-al/pycls/al/typiclust.py``. The pool is
clustered into ``min(labeled + budget, max_clusters)`` clusters; clusters of at most
``min_cluster_size`` rows are dropped, the rest ordered by fewest labeled rows, then largest; pick
``i`` takes cluster ``i mod L`` of that order and its most *typical* row not labeled or picked yet,
typicality being ``1 / (mean squared distance to its K nearest such rows of the cluster + 1e-5)``
with ``K = min(k_nn, rows left in the cluster // 2)``.

Here the clusters come from the engine's k-means (the official code uses scikit-learn's KMeans up
to 50 clusters and MiniBatchKMeans above), equal sort keys go to the smaller cluster id, and every
row's ``k_nn + ceil(budget / L)`` nearest rows of its own cluster are searched once
(:func:`activeft.engine.neighbours`): each cluster loses at most that many rows to picks, so the
first ``K`` unpicked neighbours of a row are always in its list and the typicality is exact.
Cost: k-means, then O(N^2 D / k) for the within-cluster search, and O(B N m / k) for the picks
(m = neighbours per row); memory O(N m / W).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..engine import FlatIndex, kmeans, merge_topk, neighbours
from ..params import Param, integer
from .registry import Result, Selector, register_selector


@register_selector
class TypiClust(Selector):
    """TypiClust: the most typical row of each k-means cluster, largest unlabeled clusters first."""

    name = "typiclust"
    params = {
        "max_clusters": Param(500, integer(1), "At most this many clusters (official MAX_NUM_CLUSTERS = 500); "
                                               "beyond it clusters are visited again in the same order."),
        "min_cluster_size": Param(5, integer(0), "Clusters of at most this many rows are never picked from "
                                                 "(official MIN_CLUSTER_SIZE = 5)."),
        "k_nn": Param(20, integer(1), "Neighbours in the typicality (official K_NN = 20)."),
        "iterations": Param(100, integer(1), "Lloyd iterations of the clustering."),
    }
    test_params = {"iterations": 20}

    def fit(self, pool, comm, budget, exclude, checkpoints) -> Result:
        k = min(len(exclude) + budget, self.max_clusters, pool.size)
        centroids, _ = kmeans(pool, comm, k, iterations=self.iterations, init="kmeans||", seed=self.seed,
                              checkpoints=checkpoints, tag="typiclust")
        local_cluster = FlatIndex(centroids, "l2", precision=pool.precision).search(pool.x, scores=False)[0]
        cluster = pool.whole(local_cluster, comm).cpu()
        size = torch.bincount(cluster, minlength=k)
        labeled = torch.bincount(cluster[exclude], minlength=k)
        keep = [c for c in range(k) if size[c] > self.min_cluster_size]
        order = sorted(keep, key=lambda c: (int(labeled[c]), -int(size[c]), c))
        free = sum(int(size[c] - labeled[c]) for c in order)
        if free < budget:  # (the official code fails too: it would index an empty cluster)
            raise ValueError(f"typiclust: the clusters of more than min_cluster_size={self.min_cluster_size} rows "
                             f"hold {free} unlabeled rows, fewer than the budget {budget}")
        # labeled rows leave their clusters (the official code relabels them -1): a cell of their own
        cell = cluster.clone()
        cell[exclude] = k
        mask, local = pool.local(exclude)
        local_cell = cell[pool.offset:pool.offset + len(pool.x)].to(pool.device)
        m = self.k_nn + math.ceil(budget / len(order))
        nbr, d2 = neighbours(pool, comm, m, local_cell)
        left = (size - labeled).tolist()
        picked = torch.zeros(pool.size, dtype=torch.bool)
        members = {c: (local_cell == c).nonzero().squeeze(1) for c in order}
        rows, typicality = [], []
        visit = 0
        while len(rows) < budget:
            c = order[visit % len(order)]
            visit += 1
            if left[c] == 0:
                continue
            mine = members[c][~picked[members[c].cpu() + pool.offset].to(pool.device)]
            kk = min(self.k_nn, left[c] // 2)
            if kk == 0:  # official: the mean over no neighbours is nan, and argmax takes the first row
                score = torch.zeros(len(mine), dtype=torch.float64, device=pool.device)
            else:
                valid = nbr[mine] >= 0
                valid &= ~picked[nbr[mine].clamp(min=0).cpu()].to(pool.device)
                first = valid & (torch.cumsum(valid, 1) <= kk)  # the first kk unpicked neighbours
                mean = torch.where(first, d2[mine].double(), 0.0).sum(1) / kk
                score = 1 / (mean + 1e-5)
            best = torch.full((1, 1), -torch.inf, dtype=torch.float64)
            row = torch.full((1, 1), -1, dtype=torch.long)
            if len(mine):
                j = int(torch.argmax(score))
                best[0, 0], row[0, 0] = score[j], int(mine[j]) + pool.offset
            v, r = merge_topk(best, row, comm, 1)
            rows.append(int(r[0, 0]))
            typicality.append(float(v[0, 0]))
            picked[rows[-1]] = True
            left[c] -= 1
        return Result(np.asarray(rows), {"cluster": cluster[rows].numpy(), "typicality": np.asarray(typicality)},
                      {"clusters": k, "clusters_used": len(order), "neighbours": m})
