"""The small view every pool algorithm is written against: this worker's rows and the collectives.

An algorithm sees its worker's rows of the pool (:class:`Pool`: a tensor plus the global row
offset) and :class:`Collectives`. In one process the collectives are trivial; on a Ray Train
worker group they are ``torch.distributed`` calls (gloo on CPU, nccl on GPU). Algorithms are
written against this view as faiss's contrib code is written against ``DatasetAssign``.

Determinism across worker counts: random choices use a CPU generator seeded identically on
every rank and drawn over *global* rows, sums that cross ranks are accumulated in float64, and
every cross-worker choice goes through :func:`merge_topk` (best score, ties to the smaller
row), so 1 and W workers compute the same selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_GAUGES: list = []


def on_gauge(fn) -> None:
    """Call ``fn(name, value, tag)`` for every gauge the engine reports (k-means inertia): the runtime
    forwards them to Ray's metrics, so the engine itself never imports Ray."""
    _GAUGES.append(fn)


def gauge(name: str, value: float, tag: str) -> None:
    for fn in _GAUGES:
        fn(name, value, tag)


@dataclass
class Pool:
    """This worker's rows ``x`` (L2-normalised, on the compute device): global rows
    ``[offset, offset + len(x))`` of a pool of ``size`` rows.

    ``x`` is float32, or float16 on GPU for a float16 store (half the memory; algorithms upcast a
    chunk at a time). ``precision`` is how candidate products are computed (see
    :mod:`activeft.engine.search`; None: by device); it changes speed, never the result.
    """

    x: torch.Tensor
    offset: int
    size: int
    precision: str | None = None

    @property
    def device(self) -> torch.device:
        return self.x.device

    def local(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask, local_index)``: which of the global ``rows`` live here, and where."""
        rows = rows.to(self.device)
        mask = (rows >= self.offset) & (rows < self.offset + len(self.x))
        return mask, rows[mask] - self.offset

    def gather_rows(self, rows: torch.Tensor, comm: Collectives) -> torch.Tensor:
        """The float32 feature vectors of global ``rows`` (any rank's), on every rank, in ``rows`` order."""
        out = torch.zeros(len(rows), self.x.shape[1], dtype=torch.float64, device=self.device)
        mask, idx = self.local(rows)
        out[mask] = self.x[idx].double()
        return comm.all_reduce(out).float()

    def whole(self, values: torch.Tensor, comm: Collectives) -> torch.Tensor:
        """A value per local row (first dimension) as the whole pool's, on every rank."""
        out = torch.zeros(self.size, *values.shape[1:], dtype=values.dtype, device=self.device)
        out[self.offset:self.offset + len(values)] = values
        return comm.all_reduce(out)


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


def merge_topk(values: torch.Tensor, rows: torch.Tensor, comm: Collectives, k: int | None = None):
    """The best ``k`` (all, by default) of every rank's candidates, per query, on every rank.

    ``values`` and ``rows`` are ``(queries, t)``: each rank's candidate scores (higher is better;
    ``-inf`` for none) and their global rows. Returns CPU ``(values float64, rows)`` of shape
    ``(queries, k)``, sorted by score, equal scores by the smaller row: the one cross-worker merge
    rule of the engine, so every choice is the same for any number of workers.
    """
    v = comm.all_gather(values.double()).permute(1, 0, 2).flatten(1).cpu()
    r = comm.all_gather(rows.long()).permute(1, 0, 2).flatten(1).cpu()
    order = torch.sort(r, dim=1, stable=True).indices  # equal scores -> smaller row first
    v, r = v.gather(1, order), r.gather(1, order)
    order = torch.sort(-v, dim=1, stable=True).indices[:, :k]
    return v.gather(1, order), r.gather(1, order)


def generator(seed: int) -> torch.Generator:
    """The CPU generator every rank seeds identically (GPU generators would differ)."""
    return torch.Generator().manual_seed(int(seed))


def sample_rows(n: int, k: int, g: torch.Generator, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``k`` distinct rows of ``range(n)`` minus ``exclude``, uniformly, in random order (CPU tensor).

    Rejection sampling keeps memory O(k) for k << n (a billion-row pool is never permuted).
    """
    exclude = torch.empty(0, dtype=torch.long) if exclude is None else torch.as_tensor(exclude).cpu()
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


def row_uniforms(pool: Pool, g: torch.Generator, block: int = 1 << 16) -> torch.Tensor:
    """One uniform float64 draw per local row (on the pool's device), the same for a global row
    whatever the sharding: block b of ``block`` global rows comes from a CPU generator seeded with
    ``s + b``, ``s`` drawn from ``g``. Each rank generates only the blocks it holds."""
    seed = int(torch.randint(2 ** 62, (1,), generator=g))
    lo, hi = pool.offset, pool.offset + len(pool.x)
    parts = [torch.rand(block, generator=torch.Generator().manual_seed(seed + b), dtype=torch.float64)
             [max(lo - b * block, 0):hi - b * block] for b in range(lo // block, (hi + block - 1) // block)]
    return torch.cat(parts).to(pool.device) if parts else torch.empty(0, dtype=torch.float64, device=pool.device)


def all_sum(value: float, comm: Collectives, device) -> float:
    return comm.all_reduce(torch.tensor([value], dtype=torch.float64, device=device)).item()


def log_every(total: int) -> int:
    """Progress lines at most every 10% of the work, and none before step 50 (short runs log once)."""
    return max(1, math.ceil(total / 10), min(total, 50))
