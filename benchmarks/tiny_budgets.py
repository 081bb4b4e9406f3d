"""Diagnostics of the selectors at 1 to 6 picks per class, on the Fashion-MNIST validation split (PCA-64).

Three parts (``--only``), each on the engine directly (one process) and scored with scikit-learn's
logistic regression on the picked rows' labels:

- ``sklearn``: our ``kmeans`` selection against scikit-learn's ``KMeans(n_init=1)`` with the row
  nearest each centroid: score, classes hit, inertia.
- ``restarts``: ``--seeds`` k-means runs per budget; the expected score of the lowest-inertia run
  among R (exact over all R-subsets), labels only and with label propagation (its accuracy on the pool).
- ``herding``: MaxHerding's bandwidth and kernel cut, on a random ``--subset`` of the pool: score,
  classes hit, picks per class, and the mean density percentile of the picks (hub rows).

    python benchmarks/tiny_budgets.py --only restarts --budgets 10,20,30,60 --seeds 24
    python benchmarks/tiny_budgets.py --only herding --budgets 10 --subset 12500
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from math import comb

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist  # noqa: E402

from activeft.engine import Collectives, Pool, knn_graph  # noqa: E402
from activeft.engine.propagate import spread_labels  # noqa: E402
from activeft.select import get_selector  # noqa: E402


def arrays(store) -> tuple[np.ndarray, np.ndarray]:
    t = store.read(columns=["embedding", "label"])
    x = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    return x, np.array(t.column("label"))


class Bench:
    def __init__(self, workdir: str, subset: int | None):
        pool, val = fashion_mnist.build_stores(workdir, holdout=10000)
        (self.x, self.y), (self.xv, self.yv) = arrays(pool), arrays(val)
        if subset:
            keep = np.sort(np.random.default_rng(0).choice(len(self.x), subset, replace=False))
            self.x, self.y = self.x[keep], self.y[keep]
        self.pool, self.comm = Pool(torch.from_numpy(self.x), 0, len(self.x)), Collectives()

    def probe(self, rows) -> float:
        from sklearn.linear_model import LogisticRegression

        if len(set(self.y[rows])) < 2:
            return float(np.mean(self.yv == self.y[rows][0]))
        return float(LogisticRegression(max_iter=1000).fit(self.x[rows], self.y[rows]).score(self.xv, self.yv))

    def kmeans_rows(self, budget: int, seed: int):
        """The ``kmeans`` selector's rows and final inertia."""
        result = get_selector("kmeans")(seed=seed).fit(self.pool, self.comm, budget, [], None)
        return result.rows, result.info["inertia_history"][-1]

    def row(self, **r) -> dict:
        print(json.dumps(r), flush=True)
        return r


def part_sklearn(b: Bench, budgets, seeds):
    from sklearn.cluster import KMeans

    out = []
    for budget in budgets:
        for seed in range(seeds):
            rows, inertia = b.kmeans_rows(budget, seed)
            out.append(b.row(budget=budget, seed=seed, method="ours", acc=b.probe(rows), hit=len(set(b.y[rows])),
                             inertia=inertia))
            km = KMeans(budget, n_init=1, random_state=seed).fit(b.x)
            taken: list[int] = []
            for c in km.cluster_centers_:
                taken.append(next(int(r) for r in np.argsort(((b.x - c) ** 2).sum(1)) if r not in taken))
            out.append(b.row(budget=budget, seed=seed, method="sklearn", acc=b.probe(taken),
                             hit=len(set(b.y[taken])), inertia=float(km.inertia_)))
    return out


def part_restarts(b: Bench, budgets, seeds):
    out = []
    for budget in budgets:
        runs = []
        for seed in range(seeds):
            rows, inertia = b.kmeans_rows(budget, seed)
            f, _ = spread_labels(b.pool, b.comm, torch.as_tensor(rows), torch.as_tensor(b.y[rows]), 10, alpha=0.99)
            rest = np.ones(len(b.y), bool)
            rest[rows] = False
            runs.append(b.row(budget=budget, seed=seed, inertia=inertia, acc=b.probe(rows),
                              labelprop=float((f.argmax(1).numpy() == b.y)[rest].mean()), hit=len(set(b.y[rows]))))
        runs.sort(key=lambda r: r["inertia"])
        for r_ in (r for r in (1, 2, 3, 5, 10) if r <= seeds):
            w = [comb(seeds - i - 1, r_ - 1) / comb(seeds, r_) for i in range(seeds)]  # i-th lowest is the best
            mean = {k: round(100 * sum(wi * r[k] for wi, r in zip(w, runs, strict=True)), 2)
                    for k in ("acc", "labelprop")}
            out.append(b.row(budget=budget, restarts=r_, **mean))
    return out


def part_herding(b: Bench, budgets, seeds):
    _, d2 = knn_graph(b.pool, b.comm, 10)
    density = 1 / d2.double().mean(1).numpy()
    percentile = density.argsort().argsort() / len(b.x)
    sq = (b.x * b.x).sum(1)
    sample = np.random.default_rng(1).choice(len(b.x), 500, replace=False)
    d2_sample = np.sort(np.maximum(sq[sample, None] - 2 * b.x[sample] @ b.x.T + sq[None], 0), 1)
    out = []
    for budget in budgets:
        radius = float(np.sqrt(np.median(d2_sample[:, math.ceil(len(b.x) / budget)])))  # column 0: the row itself

        def score(name, rows, budget=budget, **extra):
            out.append(b.row(budget=budget, method=name, acc=b.probe(rows), hit=len(set(b.y[rows])),
                             per_class=np.bincount(b.y[rows], minlength=10).tolist(),
                             density=round(float(percentile[rows].mean()), 3), **extra))

        for seed in range(seeds):
            score("kmeans", b.kmeans_rows(budget, seed)[0], seed=seed)
        variants = {"default": {}, **{f"h = {f} x radius": {"bandwidth": f * radius} for f in (0.5, 2, 4)},
                    "cut at N / B neighbours": {"neighbours": math.ceil(len(b.x) / budget)}}
        for name, params in variants.items():
            result = get_selector("herding")(seed=0, **params).fit(b.pool, b.comm, budget, [], None)
            score(f"herding {name}", result.rows, radius=radius, **{k: result.info[k] for k in
                                                                    ("bandwidth", "neighbours", "kernel_cut")})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="sklearn,restarts,herding")
    p.add_argument("--budgets", default="10,20,30")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--subset", type=int, help="a random subset of the pool's rows (herding: 12,500)")
    p.add_argument("--workdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_work", "quality"))
    p.add_argument("--out", help="write the rows here as JSON")
    a = p.parse_args(argv)
    b = Bench(a.workdir, a.subset)
    parts = {"sklearn": part_sklearn, "restarts": part_restarts, "herding": part_herding}
    budgets = [int(v) for v in a.budgets.split(",")]
    result = {part: parts[part](b, budgets, a.seeds) for part in a.only.split(",")}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
