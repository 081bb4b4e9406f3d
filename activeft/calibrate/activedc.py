"""ActiveDC distribution calibration on the sharded pool (Xu et al., CVPR 2024, arXiv 2311.07634).

Follows the official ``DC_v10.py`` (github.com/VincentXu521/ActiveDC, branch ``master``), used
without its ground-truth-leaking ``-un`` flag:

1. Tukey transform ``sign(x)|x|^lambda`` (lambda 0.5; ``log`` for 0) of the L2-normalised pool;
   the transformed features are not re-normalised.
2. k-means of the transformed pool (:func:`activeft.engine.kmeans`), up to 300 Lloyd iterations, best of 10 runs,
   as the code's ``faiss.Kmeans(niter=300, nredo=10)``; unlike faiss we seed with k-means++, stop
   once the inertia improves by less than 1e-4, and use every row (faiss trains on at most 256
   per centroid). k defaults to the number of classes in the labels (the code: the dataset's
   class count; they differ only when a class got no label).
3. Each labeled class is matched to the cluster holding most of its labeled samples (first
   cluster on ties); mu and Sigma of that cluster are the mean and ``np.cov`` (ddof 1) of its
   pool features, from all-reduced sums and outer-product sums of the matched clusters only.
4. ``beta = 1 - exp(-alpha p)`` (p = labeled percentage of the pool),
   ``mu' = (1 - beta) mu_cluster + beta mu_labeled``, ``Sigma' = Sigma_cluster + xi`` with xi added
   to *every* entry (``+ xi 11^T``, as the code does; not ``+ xi I``).
5. For each labeled sample, in order: draw ``samples_per_label`` features from N(mu', Sigma') of
   its class, L2-normalise them, and take each one's nearest pool row by inner product (over
   all rows, as the code's ``IndexFlatIP`` search); rows that are labeled or already taken are
   dropped (``np.setdiff1d``, which also merges duplicates); if none is left, draw again. The
   code redraws forever; here after ``max_draws`` draws that found only taken rows the sample is
   skipped and counted.
   With ``emd_filter`` a non-empty draw is also kept only if it does not raise the 1-D
   Wasserstein distance between the per-sample mean activations of the pool and of
   labeled + added rows, with at most 10 redraws before the last draw is accepted (the
   commented-out filter of ``DC_v10.py``, active in ``DC_v8_tmp.py``).

Draw t of labeled sample i uses a generator seeded with (seed, i, t), and searches run as
batched rounds (all first draws at once; a sample whose draws are all taken is redrawn before
later samples are resolved), so the result is the sequential algorithm's, for any number of
workers. Pseudo-labels come only from the labeled samples' classes: the store's own label
column is never read here.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import torch

from ..engine import Collectives, FlatIndex, Pool, kmeans, merge_topk
from ..errors import ParameterError
from ..params import BOOL, Param, Rule, integer, number, optional
from ..runtime.runner import run
from .methods import Calibrator, Pseudo, register_calibrator

log = logging.getLogger(__name__)


def tukey(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Tukey's ladder of powers: ``sign(x)|x|^lam``; ``lam == 0`` is ``sign(x) log|x|`` (0 stays 0)."""
    if lam == 1:
        return x
    if lam == 0:
        return torch.where(x == 0, torch.zeros_like(x), torch.sign(x) * torch.log(x.abs()))
    return torch.sign(x) * x.abs().pow(lam)


def samples_per_label(budget: int, n_classes: int) -> int:
    """The code's v6.2 rule: 2 draws per labeled sample, 1 once there are >= 50 labels per class."""
    return 2 if budget // n_classes < 50 else 1


def cluster_stats(pool: Pool, comm: Collectives, assign: torch.Tensor, clusters: list[int]):
    """Mean and ``np.cov``-style (ddof 1) covariance of the pool rows of each cluster in ``clusters``."""
    d = pool.x.shape[1]
    packed = torch.zeros(len(clusters) * (1 + d + d * d), dtype=torch.float64, device=pool.device)
    counts = packed[:len(clusters)]
    sums = packed[len(clusters):len(clusters) * (1 + d)].view(len(clusters), d)
    outer = packed[len(clusters) * (1 + d):].view(len(clusters), d, d)
    for j, k in enumerate(clusters):
        rows = pool.x[assign == k].double()
        counts[j], sums[j], outer[j] = len(rows), rows.sum(0), rows.T @ rows
    comm.all_reduce(packed)
    mean = sums / counts[:, None]
    cov = (outer - counts[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (counts[:, None, None] - 1)
    return mean, cov, counts


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """1-D Wasserstein distance of two samples (as ``scipy.stats.wasserstein_distance``)."""
    u, v = np.sort(u), np.sort(v)
    values = np.sort(np.concatenate([u, v]))
    deltas = np.diff(values)
    cdf_u = np.searchsorted(u, values[:-1], "right") / len(u)
    cdf_v = np.searchsorted(v, values[:-1], "right") / len(v)
    return float(np.sum(np.abs(cdf_u - cdf_v) * deltas))


def calibrate(pool: Pool, comm: Collectives, labeled_rows: np.ndarray, labeled_class: np.ndarray, n_classes: int,
              *, alpha: float, xi: float, samples_per_label: int, clusters: int, seed: int = 0,
              emd_filter: bool = False, max_draws: int = 50, kmeans_runs: int = 10) -> dict:
    """Run steps 2-5 on a pool that is already Tukey-transformed; the same result on every rank.

    Returns ``rows`` / ``origin`` (index into ``labeled_rows``) of the pseudo-labeled samples in
    the order they were added, plus statistics for the report.
    """
    k = clusters
    runs = [kmeans(pool, comm, k, iterations=300, tol=1e-4, seed=seed + r, tag="calibrate kmeans")
            for r in range(kmeans_runs)]
    centroids, history = min(runs, key=lambda run: run[1][-1])
    assign = FlatIndex(centroids, "l2").search(pool.x, scores=False)[0]

    labeled = torch.as_tensor(labeled_rows, dtype=torch.long)
    lab_cluster = torch.zeros(len(labeled), dtype=torch.float64, device=pool.device)
    mask, local = pool.local(labeled)
    lab_cluster[mask] = assign[local].double()
    lab_cluster = comm.all_reduce(lab_cluster).long().cpu().numpy()
    match = {}
    for c in range(n_classes):
        overlap = np.bincount(lab_cluster[labeled_class == c], minlength=k)
        match[c] = int(np.argmax(overlap))  # first cluster on ties, as the code's strict '>' scan
    matched = sorted(set(match.values()))
    mean, cov, counts = cluster_stats(pool, comm, assign, matched)
    if counts.min() < 2:
        small = matched[int(counts.argmin())]
        raise ParameterError(f"cluster {small} has {int(counts.min())} pool row: its covariance is undefined; "
                             "use fewer --clusters")

    feats = pool.gather_rows(labeled, comm).double()
    percent = 100.0 * len(labeled) / pool.size
    beta = 1 - math.exp(-alpha * percent)
    factors, means = [], []
    for c in range(n_classes):
        j = matched.index(match[c])
        mu = (1 - beta) * mean[j] + beta * feats[torch.as_tensor(labeled_class == c)].mean(0)
        sigma = cov[j] + xi
        vals, vecs = torch.linalg.eigh(sigma)
        means.append(mu)
        factors.append(vecs * vals.clamp(min=0).sqrt())

    def draw(i: int, attempt: int) -> torch.Tensor:
        eps = np.random.default_rng([seed, i, attempt]).standard_normal((samples_per_label, pool.x.shape[1]))
        c = int(labeled_class[i])
        z = means[c] + torch.from_numpy(eps).to(pool.device) @ factors[c].T
        return torch.nn.functional.normalize(z, dim=1).float()

    index = FlatIndex(pool.x, "ip")
    act = pool.x.mean(1) if emd_filter else None
    pool_act = torch.cat(comm.all_gather_object(act.cpu())).numpy() if emd_filter else None

    def search(queries: torch.Tensor):
        """Global nearest pool row of each query: (rows, mean activation of each row)."""
        idx, score = index.search(queries)
        _, best = merge_topk(score[:, None], (idx + pool.offset)[:, None], comm, 1)
        return [(row, float(pool_act[row]) if emd_filter else 0.0) for row in best[:, 0].tolist()]

    taken = set(labeled_rows.tolist())
    subset_act = list(pool_act[labeled_rows]) if emd_filter else None
    attempts = np.zeros(len(labeled), dtype=int)
    emd_tries = np.zeros(len(labeled), dtype=int)  # the EMD test's own 10 redraws, on top of max_draws
    pending = {i: draw(i, 0) for i in range(len(labeled))}
    candidates: dict[int, list] = {}
    rows, origin, skipped, emd_rejected = [], [], 0, 0
    first = 0
    while first < len(labeled):
        if pending:
            order = sorted(pending)
            found = search(torch.cat([pending[i] for i in order]))
            for n, i in enumerate(order):
                candidates[i] = found[n * samples_per_label:(n + 1) * samples_per_label]
            pending = {}
        i = first
        while i < len(labeled):
            picks = {row: a for row, a in candidates.pop(i) if row not in taken}  # setdiff1d: unique rows
            accept = bool(picks)
            if accept and emd_filter and emd_tries[i] < 10:
                before = wasserstein_1d(pool_act, np.asarray(subset_act))
                after = wasserstein_1d(pool_act, np.asarray(subset_act + list(picks.values())))
                rejected = after > before
                accept = not rejected
                emd_tries[i] += rejected
                emd_rejected += rejected
            if not accept:
                attempts[i] += 1
                if attempts[i] - emd_tries[i] < max_draws:
                    pending[i] = draw(i, int(attempts[i]))
                    break  # later samples wait: they must see what this one takes
                skipped += 1
            else:
                for row in sorted(picks):
                    rows.append(row)
                    origin.append(i)
                    taken.add(row)
                    if emd_filter:
                        subset_act.append(picks[row])
            i += 1
        first = i
    return {"rows": rows, "origin": origin, "skipped": skipped, "emd_rejected": emd_rejected,
            "draws": int(attempts.sum() + len(labeled)), "beta": beta, "percent": percent,
            "kmeans_inertia": history[-1], "kmeans_iterations": len(history),
            "class_cluster": {c: match[c] for c in range(n_classes)},
            "cluster_sizes": {k_: int(n) for k_, n in zip(matched, counts.tolist(), strict=True)}}


@register_calibrator
class ActiveDC(Calibrator):
    """ActiveDC's distribution calibration (module docstring), the paper's method."""

    name = "activedc"
    params = {
        "alpha": Param(0.7, number(0), "beta = 1 - exp(-alpha * p) weighs the labeled class mean against its "
                                       "cluster's mean (p = labeled percentage of the pool). The official README "
                                       "uses 0.7 on CIFAR-10 at 1%."),
        "xi": Param(0.2, number(0), "Added to every entry of the cluster covariance (the official value)."),
        "tukey_lambda": Param(0.5, number(), "Tukey transform exponent (0: log)."),
        "clusters": Param(None, optional(integer(1)), "k of the k-means; default the number of labeled classes."),
        "samples_per_label": Param("auto", Rule(str, lambda v: v == "auto" or (str(v).isdigit() and int(v) >= 1),
                                                "'auto' or an int >= 1", int | str),
                                   "Draws per labeled sample; auto is 2 below 50 labels per class, else 1."),
        "emd_filter": Param(False, BOOL, "Keep a draw only if it does not raise the 1-D Wasserstein distance of "
                                         "mean activations."),
        "max_draws": Param(50, integer(1), "Draws per labeled sample before it is skipped (the official code never "
                                           "gives up)."),
        "kmeans_runs": Param(10, integer(1), "k-means runs (different seeds) of which the lowest inertia is kept "
                                             "(the code's nredo)."),
    }

    def fit(self, store, rows, klass, classes, *, num_workers, use_gpu) -> Pseudo:
        per_label = samples_per_label(len(rows), len(classes)) if self.samples_per_label == "auto" \
            else int(self.samples_per_label)
        params = {"alpha": self.alpha, "xi": self.xi, "samples_per_label": per_label,
                  "clusters": self.clusters or len(classes), "seed": self.seed, "emd_filter": self.emd_filter,
                  "max_draws": self.max_draws, "kmeans_runs": self.kmeans_runs}
        job = functools.partial(_job, rows, klass, len(classes), params)
        result = run(job, store, num_workers=num_workers, use_gpu=use_gpu,
                     transform=functools.partial(tukey, lam=self.tukey_lambda))
        origin = np.asarray(result["origin"], dtype=np.int64)
        origin_ids = store.take(rows[origin], ["id"]).column("id").to_numpy(zero_copy_only=False)
        info = {"params": {**self.config(), **params}, "skipped": result["skipped"], "draws": result["draws"],
                "emd_rejected": result["emd_rejected"], "beta": result["beta"], "labeled_percent": result["percent"],
                "class_cluster": {str(classes[int(c)]): k for c, k in result["class_cluster"].items()},
                "cluster_sizes": result["cluster_sizes"], "kmeans_inertia": result["kmeans_inertia"]}
        return Pseudo(np.asarray(result["rows"], dtype=np.int64), klass[origin], {"origin_id": origin_ids},
                      {"origin_id": None}, info)


def _job(rows, klass, n_classes, params, pool, comm, checkpoints) -> dict:
    return calibrate(pool, comm, rows, klass, n_classes, **params)
