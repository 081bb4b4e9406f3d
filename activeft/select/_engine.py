"""The small interface every pool algorithm is written against, and its chunked primitives.

An algorithm sees its worker's rows of the pool (:class:`Pool`: a float32 tensor plus the
global row offset) and :class:`Collectives`. In one process the collectives are trivial; on a
Ray Train worker group they are ``torch.distributed`` calls (gloo on CPU, nccl on GPU). The
algorithms never hold an N x K matrix: work runs in row chunks of bounded memory.

Determinism across worker counts: random choices use a CPU generator seeded identically on
every rank and drawn over *global* rows, and sums that cross ranks are accumulated in float64,
so 1 and W workers compute the same selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CHUNK_BYTES = 64 << 20  # memory bound of one chunk's (rows x centroids) score block


@dataclass
class Pool:
    """This worker's rows ``x`` (float32, L2-normalised, on the compute device): global rows
    ``[offset, offset + len(x))`` of a pool of ``size`` rows."""

    x: torch.Tensor
    offset: int
    size: int

    @property
    def device(self) -> torch.device:
        return self.x.device

    def local(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask, local_index)``: which of the global ``rows`` live here, and where."""
        rows = rows.to(self.device)
        mask = (rows >= self.offset) & (rows < self.offset + len(self.x))
        return mask, rows[mask] - self.offset

    def gather_rows(self, rows: torch.Tensor, comm: Collectives) -> torch.Tensor:
        """The feature vectors of global ``rows`` (any rank's), on every rank, in ``rows`` order."""
        out = torch.zeros(len(rows), self.x.shape[1], dtype=torch.float64, device=self.device)
        mask, idx = self.local(rows)
        out[mask] = self.x[idx].double()
        return comm.all_reduce(out).float()


class Collectives:
    """One process: every collective is the identity."""

    rank, world_size = 0, 1

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(0)

    def all_gather_object(self, obj) -> list:
        return [obj]


class TorchCollectives(Collectives):
    """``torch.distributed`` collectives of the default process group (set up by Ray Train)."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def all_reduce(self, t):
        self.dist.all_reduce(t)
        return t

    def all_gather(self, t):
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self.dist.all_gather(out, t.contiguous())
        return torch.stack(out)

    def all_gather_object(self, obj):
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out


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


def generator(seed: int) -> torch.Generator:
    """The CPU generator every rank seeds identically (GPU generators would differ)."""
    return torch.Generator().manual_seed(int(seed))


def sample_rows(n: int, k: int, g: torch.Generator, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``k`` distinct rows of ``range(n)`` minus ``exclude``, uniformly, in random order (CPU tensor).

    Rejection sampling keeps memory O(k) for k << n (a billion-row pool is never permuted).
    """
    exclude = torch.empty(0, dtype=torch.long) if exclude is None else exclude.cpu()
    if (k + len(exclude)) * 4 >= n:
        keep = torch.ones(n, dtype=torch.bool)
        keep[exclude] = False
        rows = keep.nonzero().squeeze(1)
        return rows[torch.randperm(len(rows), generator=g)[:k]]
    picked = torch.empty(0, dtype=torch.long)
    while len(picked) < k:
        draw = torch.randint(n, (2 * (k - len(picked)) + 16,), generator=g)
        picked = torch.unique(torch.cat([picked, draw]))
        picked = picked[~torch.isin(picked, exclude)]
    return picked[torch.randperm(len(picked), generator=g)[:k]]


def global_argmax(value: torch.Tensor, row: torch.Tensor, comm: Collectives) -> tuple[float, int]:
    """The largest ``value`` over ranks and its global ``row``; ties go to the smaller row."""
    pair = torch.tensor([float(value), float(row)], dtype=torch.float64, device=value.device)
    pairs = comm.all_gather(pair).cpu()
    best = max(range(len(pairs)), key=lambda r: (pairs[r, 0].item(), -pairs[r, 1].item()))
    return pairs[best, 0].item(), int(pairs[best, 1].item())


def all_sum(value: float, comm: Collectives, device) -> float:
    return comm.all_reduce(torch.tensor([value], dtype=torch.float64, device=device)).item()


def log_every(total: int) -> int:
    """Progress lines at most every 10% of the work, and none before step 50 (short runs log once)."""
    return max(1, math.ceil(total / 10), min(total, 50))


class Checkpoints:
    """Where an algorithm saves and restores its state; this base keeps nothing.

    ``save`` is called by every rank at the same step (Ray Train's ``report`` is a barrier);
    the state must be identical on all ranks (replicated centroids, optimiser, RNG).
    ``fail_at`` is a test hook (as faiss's ``crash_at``): the last rank raises right after
    saving at that step, unless the run was itself restored from a checkpoint.
    """

    every: int = 0
    fail_at: int | None = None
    restored: bool = False
    rank: int = 0
    world_size: int = 1

    def load(self) -> dict | None:
        return None

    def save(self, state: dict, metrics: dict) -> None:
        pass

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def _after_save(self, step: int) -> None:
        if self.fail_at is not None and not self.restored and step >= self.fail_at \
                and self.rank == self.world_size - 1:
            raise RuntimeError(f"injected failure of worker {self.rank} after step {step} (test hook)")


class LocalCheckpoints(Checkpoints):
    """One process: the state as ``state.pt`` under a URI (``torch.load(weights_only=True)`` to read)."""

    def __init__(self, uri: str, every: int, fail_at: int | None = None):
        from .. import storage

        self.uri, self.every, self.fail_at, self._storage = storage.join(uri, "state.pt"), every, fail_at, storage
        self.restored = storage.exists(self.uri)

    def load(self):
        if not self._storage.exists(self.uri):
            return None
        import io

        return torch.load(io.BytesIO(self._storage.read_bytes(self.uri)), weights_only=True)

    def save(self, state, metrics):
        import io

        buf = io.BytesIO()
        torch.save(state, buf)
        self._storage.write_bytes(self.uri, buf.getvalue())
        self._after_save(next(iter(metrics.values())))
