"""ActiveFT (Xie et al., CVPR 2023, arXiv 2303.14382), faithful to the official code.

Official code: github.com/yichen928/ActiveFT, ``data_selection/sample_tools/ActiveFT_CIFAR.py``
(``SampleModel.get_loss``, ``optimize_dist``) and ``ActiveFT_ImageNet.py`` (mini-batches).
B centroids theta (raw parameters, re-normalised in every forward: c = theta / |theta|) start
at B random pool features (or FPS / k-means++ seeds). Each step, every sample f_i (unit norm)
is assigned to its most similar centroid c_i, and the loss is::

    L = -(1/N) sum_i log[ s_i / (s_i + lambda * Z_{c_i}) ],   s_i = exp(f_i . c_{c_i} / tau),
    Z_k = sum_j exp(sg(c_j) . c_k / tau)   (j over all centroids, self term included)

minimised with Adam (lr 1e-3, tau 0.07, lambda 1, 300 iterations by default), optionally on a
fresh random mini-batch of M rows per step (the ImageNet script uses M = 100,000). Afterwards
each centroid, in index order, takes its most similar sample not yet taken (:func:`activeft.engine.greedy_unique`).

Where the code differs from the paper's formula (-E[sim/tau] + E_j[log sum_{k != j} exp(...)]),
we follow the code: the log-sum also holds the positive and the self term; the repulsion is
averaged over samples, weighting each centroid by its share of the pool; a centroid that owns
no sample gets no gradient in that step; and the left factor of Z is detached, so a centroid
is repelled only through its own Z_k.

Memory: the N x B similarity matrix and its autograd graph are never built. The arg-max is
taken in chunks without autograd (faiss on CPU; on GPU candidates in the pool's precision with
near ties scored exactly, so the assignment is that of exact scores: :mod:`activeft.engine.search`);
since the gradient of a max reaches only the arg-max entry, the gradient is that of the assigned
centroids alone, computed in closed form (:func:`loss_and_grad`; equal to the dense code's
autograd, tested). Per-worker sums are all-reduced (float64), then pushed through Z and the
normalisation on every rank alike, so all ranks take the same Adam step. Peak memory: the rows +
O(chunk x D + B x chunk).

With excluded (already labeled) rows, their features are fixed extra centroids: samples near
them are assigned to them and new centroids are repelled from them, as in ASVP's "ActiveFT(al)"
hybrid initialisation (github.com/ZiTingW/asvp, ``samplings/ActiveFT_large.py``).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import (
    Collectives,
    FlatIndex,
    Pool,
    chunk_rows,
    exact_scores,
    generator,
    greedy_unique,
    k_center_greedy,
    log_every,
    sample_rows,
    seed_rows,
    stream_rows,
)
from ..params import Param, integer, number, one_of, optional
from ..runtime import metrics
from .registry import Result, Selector, register_selector

log = logging.getLogger(__name__)


def partition(c: torch.Tensor, tau: float) -> torch.Tensor:
    """``Z_k = sum_j exp(c_j . c_k / tau)`` for every k, in chunks of centroids."""
    z = torch.empty(len(c), dtype=c.dtype, device=c.device)
    step = chunk_rows(len(c), 4, c.device)
    for lo in range(0, len(c), step):
        z[lo:lo + step] = torch.exp(c[lo:lo + step] @ c.T / tau).sum(1)
    return z


def loss_and_grad(pool: Pool, comm: Collectives, theta: torch.Tensor, fixed: torch.Tensor, rows, n: int,
                  tau: float, balance: float) -> tuple[float, torch.Tensor]:
    """The ActiveFT loss over ``rows`` (local rows of this step, or None for all) and d loss / d theta.

    ``n`` is the number of rows in the step over all workers. Returns the same values on every rank.

    The gradient is the closed form of the autograd of the official code (checked against it in
    the tests): with a_i = f_i . c_{c_i} / tau (the arg-max score itself) and
    w_i = s_i / (s_i + lambda Z_{c_i}) - 1,

        dL/dc_k     = (1 / (N tau)) sum_{i in k} w_i f_i
        dL/dlog Z_k = -(1 / N)      sum_{i in k} w_i

    so no per-sample copy of the centroids is gathered or differentiated. The sums are taken
    sample by sample in float64, so they do not depend on how rows are split over workers.
    """
    k_fixed = len(fixed)
    with torch.no_grad():
        c = torch.cat([fixed, F.normalize(theta, dim=1)])
        c64 = c.double()  # the B x B terms in float64: BLAS may split their reductions by thread count
        z = partition(c64, tau)
        x = pool.x if rows is None else pool.x[rows]
        idx = FlatIndex(c, "ip", precision=pool.precision).search(x, scores=False)[0]
        log_bz = (math.log(balance) if balance > 0 else -math.inf) + z.log()
        k_all, dim = c.shape
        packed = torch.zeros(k_all * dim + k_all + 1, dtype=torch.float64, device=pool.device)
        grad_c, grad_logz = packed[:k_all * dim].view(k_all, dim), packed[k_all * dim:-1]
        step = stream_rows(dim, pool.device)
        for lo in range(0, len(x), step):
            i, xs = idx[lo:lo + step], x[lo:lo + step]
            a = exact_scores(xs, c, i).double() / tau  # the arg-max score, exactly (thread-invariant)
            w = torch.sigmoid(a - log_bz[i]) - 1  # s / (s + lambda Z) - 1
            packed[-1] += (torch.logaddexp(a, log_bz[i]) - a).sum()
            grad_c.index_add_(0, i, torch.mul(xs, w[:, None]))  # float64 by promotion, one pass
            grad_logz.index_add_(0, i, -w)
        total = comm.all_reduce(packed) / n
        grad_c = total[:k_all * dim].view(k_all, dim)[k_fixed:] / tau
        grad_z = total[k_all * dim:-1][k_fixed:] / z[k_fixed:]  # d/dZ_k from d/dlog Z_k
        # through Z: dZ_k/dc_k = sum_j exp(c_j . c_k / tau) c_j / tau (left factor detached)
        learn, step = c64[k_fixed:], chunk_rows(len(c), 8, pool.device)
        for lo in range(0, len(learn), step):
            e = torch.exp(learn[lo:lo + step] @ c64.T / tau)
            grad_c[lo:lo + step] += grad_z[lo:lo + step, None] * (e @ c64) / tau
        grad_c = grad_c.float()
    t = theta.detach().requires_grad_()
    F.normalize(t, dim=1).backward(grad_c)
    return total[-1].item(), t.grad


@register_selector
class ActiveFT(Selector):
    """ActiveFT: parametric centroids matched to the pool distribution, then mapped to samples."""

    name = "activeft"
    params = {
        "iterations": Param(300, integer(1), "Optimisation steps (official: 300 CIFAR, 100 ImageNet)."),
        "temperature": Param(0.07, number(0, strict=True), "Temperature tau of both similarity terms."),
        "balance": Param(1.0, number(0), "Weight lambda of the diversity term."),
        "lr": Param(1e-3, number(0, strict=True), "Adam learning rate."),
        "batch_size": Param(None, optional(integer(1)), "Pool rows sampled per step (None: the whole pool; the "
                                                        "official ImageNet script uses 100000)."),
        "init": Param("random", one_of("random", "fps", "kmeans++", "kmeans||"),
                      "Initial centroids: random pool features (official default), FPS, k-means++ or k-means|| "
                      "seeds."),
    }
    test_params = {"iterations": 60, "batch_size": 300}  # mini-batch steps: their row sampling is sharded too

    def fit(self, pool, comm, budget, exclude, checkpoints) -> Result:
        t_init, g = time.perf_counter(), generator(self.seed)
        fixed = pool.gather_rows(exclude, comm) if len(exclude) else pool.x.new_zeros((0, pool.x.shape[1]))
        state = checkpoints.load() if checkpoints else None
        if state is None:
            init = self._init_rows(pool, comm, budget, exclude, g)
            theta = torch.nn.Parameter(pool.gather_rows(init, comm))
            opt = torch.optim.Adam([theta], lr=self.lr)
            start, history = 0, []
        else:
            init = state["init_rows"]
            theta = torch.nn.Parameter(state["theta"].to(pool.device))
            opt = torch.optim.Adam([theta], lr=self.lr)
            opt.load_state_dict(state["optimizer"])
            g.set_state(state["generator"])
            start, history = state["iteration"], state["history"].tolist()
        every, t0 = log_every(self.iterations), time.perf_counter()
        for it in range(start, self.iterations):
            rows, n = None, pool.size
            if self.batch_size is not None and self.batch_size < pool.size:
                _, rows = pool.local(sample_rows(pool.size, self.batch_size, g))
                n = self.batch_size
            loss, grad = loss_and_grad(pool, comm, theta.detach(), fixed, rows, n, self.temperature, self.balance)
            theta.grad = grad
            opt.step()
            history.append(loss)
            metrics.set("activeft_select_loss", loss, stage="select")
            metrics.set("activeft_select_iteration", it + 1, stage="select")
            if comm.rank == 0 and ((it + 1) % every == 0 or it + 1 == self.iterations):
                rate = (it + 1 - start) / (time.perf_counter() - t0)
                log.info("activeft: iteration %d/%d loss %.6f (%.2f it/s)", it + 1, self.iterations, loss, rate)
            if checkpoints and checkpoints.due(it + 1) and it + 1 < self.iterations:
                checkpoints.save({"theta": theta.detach().cpu(), "optimizer": opt.state_dict(), "iteration": it + 1,
                                  "generator": g.get_state(), "history": torch.tensor(history),
                                  "init_rows": init}, {"iteration": it + 1, "loss": loss})
        t_map = time.perf_counter()
        centroids = F.normalize(theta.detach(), dim=1)
        rows, sims = greedy_unique(pool, comm, centroids, taken=exclude)
        return Result(rows.numpy(), {"centroid": np.arange(budget), "similarity": sims.numpy()},
                      {"loss_history": history, "init_rows": init.tolist(),
                       "resumed_from_iteration": start if state is not None else None,
                       "seconds_init": round(t0 - t_init, 3), "seconds_optimize": round(t_map - t0, 3),
                       "seconds_mapping": round(time.perf_counter() - t_map, 3)})

    def _init_rows(self, pool, comm, budget, exclude, g) -> torch.Tensor:
        if self.init == "fps":
            return k_center_greedy(pool, comm, budget, g, exclude, tag="activeft init (fps)")
        return seed_rows(pool, comm, budget, g, exclude, self.init)  # "random": uniform pool rows
