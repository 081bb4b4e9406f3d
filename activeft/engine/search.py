"""Exact nearest-row search in bounded-memory chunks: the one search every algorithm uses."""

from __future__ import annotations

import torch

CHUNK_BYTES = 64 << 20  # memory bound of one chunk's (rows x centroids) score block


def chunk_rows(k: int, dtype_bytes: int = 4) -> int:
    """Rows per chunk so that a (rows x k) block stays within :data:`CHUNK_BYTES`."""
    return max(1, CHUNK_BYTES // (max(k, 1) * dtype_bytes))


class FlatIndex:
    """Exact nearest-row search among the rows of ``c``: ``search(x) -> (index, score)``, no autograd.

    ``metric="ip"``: largest inner product (cosine for unit vectors), score = the product;
    ``metric="l2"``: smallest Euclidean distance, score = the squared distance.
    Candidates come from ``faiss.knn`` for CPU tensors (blocked BLAS with a fused top-k, no copy of
    ``c``; faster than a chunked torch matmul, see benchmarks/RESULTS.md) and from chunked torch
    matmuls on GPU (``backend="torch"`` forces those on CPU too). BLAS results move in the last
    bit with blocking and thread count, so the best two candidates of a near-tie are re-scored
    row by row and the better kept (ties to the smaller index), and returned scores are computed
    row by row: the answer is the same for any number of workers and threads. With
    ``scores=False`` only near-ties are re-scored and no score is returned. Memory is bounded by
    :data:`CHUNK_BYTES`.
    """

    def __init__(self, c: torch.Tensor, metric: str = "ip", backend: str | None = None):
        self.c, self.metric = c.detach(), metric
        self.backend = backend or ("faiss" if c.device.type == "cpu" else "torch")

    def _candidates(self, x: torch.Tensor, k: int):
        if self.backend == "faiss":
            import faiss

            metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
            value, cand = faiss.knn(x.detach().float().contiguous().numpy(),
                                    self.c.float().contiguous().numpy(), k, metric=metric)
            return torch.from_numpy(value).to(x.device), torch.from_numpy(cand).long().to(x.device)
        value = torch.empty(len(x), k, dtype=x.dtype, device=x.device)
        cand = torch.empty(len(x), k, dtype=torch.long, device=x.device)
        half_norm = (self.c * self.c).sum(1) / 2 if self.metric == "l2" else None
        step = chunk_rows(len(self.c))
        for lo in range(0, len(x), step):
            s = x[lo:lo + step] @ self.c.T
            if half_norm is not None:
                s -= half_norm
            value[lo:lo + step], cand[lo:lo + step] = s.topk(k, dim=1)
        return value, cand

    def search(self, x: torch.Tensor, scores: bool = True):
        k = min(2, len(self.c))
        with torch.no_grad():
            value, cand = self._candidates(x, k)
            idx = cand[:, 0].clone()
            if k == 2:  # near-ties: re-score both candidates exactly, keep the better (ties: smaller index)
                gap = (value[:, 0] - value[:, 1]).abs() <= 1e-4 * value[:, 0].abs().clamp(min=1)
                rows = gap.nonzero().squeeze(1)
                if len(rows):
                    first = _score(x[rows], self.c, idx[rows], self.metric)
                    alt = cand[rows, 1]
                    second = _score(x[rows], self.c, alt, self.metric)
                    better = (second > first) if self.metric == "ip" else (second < first)
                    better |= (second == first) & (alt < idx[rows])
                    idx[rows[better]] = alt[better]
            return idx, (_score(x, self.c, idx, self.metric) if scores else None)


def nearest(x: torch.Tensor, c: torch.Tensor, metric: str = "ip", backend: str | None = None):
    """For each row of ``x``, its nearest row of ``c``: ``(index, score)`` (see :class:`FlatIndex`)."""
    return FlatIndex(c, metric, backend).search(x)


def _score(x: torch.Tensor, c: torch.Tensor, idx: torch.Tensor, metric: str) -> torch.Tensor:
    """Row-by-row score of each ``x[i]`` against ``c[idx[i]]``, in chunks (no BLAS: thread-invariant)."""
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    step = chunk_rows(x.shape[1])
    for lo in range(0, len(x), step):
        d = c[idx[lo:lo + step]]
        out[lo:lo + step] = (x[lo:lo + step] * d).sum(1) if metric == "ip" else ((x[lo:lo + step] - d) ** 2).sum(1)
    return out
