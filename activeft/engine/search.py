"""Exact nearest-row search in bounded-memory chunks, with candidates in reduced precision: the one
search every algorithm uses.

Exact scores (:func:`exact_scores`): float32 products (``ip``) or squared differences (``l2``)
summed pairwise in a fixed order, every step one IEEE-rounded elementwise operation, so a pair
(row, centroid) scores the same bits on any device, chunk shape, thread count or number of
workers. Every decision (nearest centroid, mapping order, k-center, D^2 sampling) is taken on
them, ties to the smaller index.

Candidates: the products ``x @ c.T`` in one of :data:`PRECISIONS` (``fp32``: faiss on CPU, strict
float32 cuBLAS on GPU; ``tf32``: tensor cores on GPU, float32 on CPU, which has no TF32 units;
``bf16``: inputs and output rounded to bfloat16, float32 accumulation), then each row's top
:data:`FIRST_K`. Error bound (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
§3.1 for inner products, §4.2 for pairwise sums): with u = 2^-24, input rounding u_in (0 for
fp32, 2^-10 for tf32, allowing the tensor cores to truncate, 2^-8 for bf16) and output rounding
u_out (u, or 2^-8 for bf16), a candidate score (``ip``: x.c; ``l2``: x.c - |c|^2/2, or faiss's
-|x - c|^2/2) is off by at most ``(2 u_in + u_in^2 + n u_out) M1 + 2 D u M2``: the rounding of
the operands and of the output (n = 1 for ``ip``, 2 for ``l2``, whose bias is rounded too), and D
products summed in any order (x2 for truncating tensor-core adds); an exact score is off by at
most ``(ceil(log2 D) + 2) u M2``. Here M1 = M2 = |x| max|c| for ``ip``; for ``l2`` M1 = max|c|
(|x| + max|c| / 2) and M2 = (|x| + max|c|)^2. The exact best of a row is therefore among its
candidates within twice the sum of both bounds (1% slack) of its top one: for unit vectors and
D = 384, 9.4e-5 (fp32), 4.0e-3 (tf32) and 2.4e-2 (bf16) for ``ip``. A row with one candidate in
that band keeps it; one with several has them re-scored exactly; one whose last candidate is
still in the band is searched again with :data:`GROW` times as many (the last round takes every
centroid). So every precision picks the same rows as exact scoring; a lower one only moves work
into the re-scoring, which grows with how many centroids sit within the band of a row's best
(see benchmarks/RESULTS.md).

GPU: chunk sizes come from the device's free memory, and chunk loops never wait for the device;
near-tie rows are gathered once per round, after the loop.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch

CHUNK_BYTES = 64 << 20  # CPU memory bound of one chunk's (rows x centroids) score block
STREAM_BYTES = 4 << 20  # CPU: one chunk of rows upcast to float64 and summed, cache-resident
GPU_CHUNK_MAX = 2 << 30  # on CUDA: an eighth of the free memory, at most this
FIRST_K = {"fp32": 3, "tf32": 8, "bf16": 8}  # candidates per row in the first round: wider bands keep more
GROW = 8  # candidate growth per further round
GROUP = 64  # columns per group of :func:`topk`
UNIT = 2.0 ** -24  # float32 unit roundoff
SLACK = 1.01  # second-order terms and the float32 rounding of the norms in the band
PRECISIONS = {  # name: (input rounding, output rounding, dtype of the products)
    "fp32": (0.0, UNIT, torch.float32),
    "tf32": (2.0 ** -10, UNIT, torch.float32),
    "bf16": (2.0 ** -8, 2.0 ** -8, torch.bfloat16),
}


def chunk_bytes(device=None) -> int:
    """Memory for one chunk's temporaries: :data:`CHUNK_BYTES` on CPU; on CUDA an eighth of what is
    free (the driver's count plus what torch's allocator holds unused), at most 2 GiB."""
    device = torch.device(device or "cpu")
    if device.type != "cuda":
        return CHUNK_BYTES
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(min(max(free // 8, CHUNK_BYTES), GPU_CHUNK_MAX))


def chunk_rows(k: int, dtype_bytes: int = 4, device=None) -> int:
    """Rows per chunk so that a (rows x k) block stays within :func:`chunk_bytes`."""
    return max(1, chunk_bytes(device) // (max(k, 1) * dtype_bytes))


def stream_rows(width: int, device=None) -> int:
    """Rows per chunk of a pass that upcasts ``(rows x width)`` values to float64 and sums them: a
    cache-resident :data:`STREAM_BYTES` block on CPU (5-8x faster there than a 64 MB one), as
    :func:`chunk_rows` on CUDA (few large kernels)."""
    if torch.device(device or "cpu").type == "cuda":
        return chunk_rows(width, 8, device)
    return max(1, STREAM_BYTES // (max(width, 1) * 8))


def default_precision(device) -> str:
    """``tf32`` on CUDA, ``fp32`` elsewhere. Every precision selects the same rows; tf32's error band
    (4.0e-3 for unit vectors) is 6x narrower than bf16's (2.4e-2), so where many centroids sit near
    a row's best it re-scores far fewer near ties; on CPU faiss's float32 is the fastest search."""
    return "tf32" if torch.device(device).type == "cuda" else "fp32"


def resolve_precision(precision: str | None, device) -> str:
    """``precision``, or :func:`default_precision` when None; ``tf32`` is ``fp32`` off CUDA."""
    name = precision or default_precision(device)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))} or None (by device); "
                         f"got {precision!r}")
    return "fp32" if name == "tf32" and torch.device(device).type != "cuda" else name


@functools.cache
def has_faiss() -> bool:
    """Whether faiss imports (fp32 candidates on CPU come from it when it does)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _matmul_mode(precision: str, device: torch.device):
    """cuBLAS in ``precision``: TF32 only for tf32, no reduced-precision bf16 reductions (the bound
    assumes float32 accumulation); restored afterwards. Nothing to set on CPU."""
    if device.type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    try:
        saved, key, value = m.fp32_precision, "fp32_precision", "tf32" if precision == "tf32" else "ieee"
    except AttributeError:  # torch before the fp32_precision API
        saved, key, value = m.allow_tf32, "allow_tf32", precision == "tf32"
    saved_bf16 = m.allow_bf16_reduced_precision_reduction
    setattr(m, key, value)
    m.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        setattr(m, key, saved)
        m.allow_bf16_reduced_precision_reduction = saved_bf16


def products(a: torch.Tensor, b: torch.Tensor, precision: str, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` in ``precision`` (resolved), converting the operands when needed."""
    dtype = PRECISIONS[precision][2]
    a, b = a.to(dtype), b.to(dtype)
    with _matmul_mode(precision, a.device):
        return a @ b.T if bias is None else torch.addmm(bias.to(dtype), a, b.T)


def band_factors(precision: str, metric: str, dim: int) -> tuple[float, float]:
    """``(a, b)`` with ``e + e_exact = a M1 + b M2`` (module docstring); the band is twice that."""
    u_in, u_out, _ = PRECISIONS[precision]
    a = 2 * u_in + u_in ** 2 + (1 if metric == "ip" else 2) * u_out
    b = 2 * dim * UNIT + (math.ceil(math.log2(max(dim, 2))) + 2) * UNIT
    return a * SLACK, b * SLACK


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """float32 L2 norm of every row, in chunks (no float32 copy of a float16 ``x``)."""
    out = torch.empty(len(x), dtype=torch.float32, device=x.device)
    step = chunk_rows(x.shape[1], 4, x.device)
    for lo in range(0, len(x), step):
        out[lo:lo + step] = torch.linalg.vector_norm(x[lo:lo + step], dim=1, dtype=torch.float32)
    return out


def topk(s: torch.Tensor, k: int):
    """``s.topk(k, dim=1)`` (values, columns; sorted) reading ``s`` once: the top k of a row lie in
    the k groups of :data:`GROUP` columns with the largest maxima (plus any columns left over), so
    only those are gathered and sorted. On GPU ``torch.topk`` reads a long row many times."""
    m, n = s.shape
    if k * GROUP >= n:
        return s.topk(k, dim=1)
    full = n // GROUP * GROUP
    best = s[:, :full].view(m, full // GROUP, GROUP).amax(-1).topk(k, dim=1).indices
    cols = (best[:, :, None] * GROUP + torch.arange(GROUP, device=s.device)).flatten(1)
    if full < n:
        cols = torch.cat([cols, torch.arange(full, n, device=s.device).expand(m, -1)], 1)
    v, j = s.gather(1, cols).topk(k, dim=1)
    return v, cols.gather(1, j)


def _fixed_sum(p: torch.Tensor) -> torch.Tensor:
    """Sum of each row of ``p`` (overwritten) in a fixed pairwise order, the same bits everywhere."""
    n = p.shape[1]
    while n > 1:
        h = (n + 1) // 2
        p[:, :n - h] += p[:, h:n]
        n = h
    return p[:, 0]


def exact_scores(x: torch.Tensor, c: torch.Tensor, idx: torch.Tensor | None, metric: str = "ip",
                 rows: torch.Tensor | None = None) -> torch.Tensor:
    """Exact float32 score of each ``x[rows[i]]`` (``x[i]`` when ``rows`` is None) with ``c[idx[i]]``
    (``c[0]`` when ``idx`` is None): the inner product (``ip``) or the squared distance (``l2``),
    summed pairwise in a fixed order. In chunks; any float dtype, computed in float32."""
    n = len(rows) if rows is not None else len(x) if idx is None else len(idx)
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    step = chunk_rows(3 * x.shape[1], 4, x.device)
    for lo in range(0, n, step):
        xs = (x[lo:lo + step] if rows is None else x[rows[lo:lo + step]]).float()
        if idx is None:
            p = torch.mul(xs, c[:1].float()) if metric == "ip" else torch.sub(xs, c[:1].float()).square_()
        else:  # the gathered centroids are a new tensor: work in it (c - x squares to the same as x - c)
            p = c[idx[lo:lo + step]].float()
            p = p.mul_(xs) if metric == "ip" else p.sub_(xs).square_()
        out[lo:lo + step] = _fixed_sum(p)
    return out


class FlatIndex:
    """Exact nearest-row search among the rows of ``c``: ``search(x) -> (index, score)``, no autograd.

    ``metric="ip"``: largest inner product (cosine for unit vectors), score = the product;
    ``metric="l2"``: smallest Euclidean distance, score = the squared distance. ``precision``
    (None: :func:`default_precision` of ``c``'s device) only sets how candidates are found (module
    docstring): the index and the (exact) scores are the same for all. Candidates come from
    ``faiss.knn`` for CPU tensors in fp32 when faiss is installed (blocked BLAS with a fused top-k,
    no copy of ``c``) and from chunked torch matmuls otherwise (``backend="torch"`` forces those).
    ``rescored`` counts the (row, candidate) pairs scored exactly, ``deeper`` the rows searched
    again. Memory: one chunk (:func:`chunk_rows`) plus O(rows x :data:`FIRST_K`).
    """

    def __init__(self, c: torch.Tensor, metric: str = "ip", backend: str | None = None, precision: str | None = None):
        self.c, self.metric = c.detach(), metric
        self.precision = resolve_precision(precision, self.c.device)
        cpu_fp32 = self.c.device.type == "cpu" and self.precision == "fp32"
        self.backend = backend or ("faiss" if cpu_fp32 and has_faiss() else "torch")
        if self.backend == "faiss" and self.precision != "fp32":
            raise ValueError(f"the faiss backend searches in fp32, not {self.precision}")
        self._a, self._b = band_factors(self.precision, metric, self.c.shape[1])
        self.c_max = row_norms(self.c).max() if len(self.c) else torch.zeros((), device=self.c.device)
        if self.backend == "torch":  # converted once, not per chunk
            dtype = PRECISIONS[self.precision][2]
            self._c = self.c.to(dtype)
            self._bias = None if metric == "ip" else ((self.c.float() ** 2).sum(1) / -2).to(dtype)
        self.rescored = self.deeper = 0

    def search(self, x: torch.Tensor, scores: bool = True):
        with torch.no_grad():
            idx = self._nearest(x, min(FIRST_K[self.precision], len(self.c)))
            return idx, (exact_scores(x, self.c, idx, self.metric) if scores else None)

    def knn(self, x: torch.Tensor, m: int):
        """The ``m`` nearest rows of ``c`` to each row of ``x``, exactly: ``(index (n, m), score (n, m))``,
        best first, equal exact scores by the smaller index (an exact sort of :func:`exact_scores`).

        Candidates come in the index's precision, ``m + m / 16`` and :data:`FIRST_K` more; a row is
        done when its ``m``-th candidate sits more than the band above its last one (then every row
        of ``c`` not listed scores below all ``m`` listed, exactly); otherwise it is searched again
        with twice as many.
        """
        m = min(m, len(self.c))
        with torch.no_grad():
            return self._knn(x, m, min(m + m // 16 + FIRST_K[self.precision], len(self.c)))

    def _knn(self, x: torch.Tensor, m: int, k: int):
        value, cand, half_band = self._candidates(x, k)
        again = (value[:, -1] >= value[:, m - 1] - 2 * half_band) & (k < len(self.c))
        done = (~again).nonzero().squeeze(1)  # rows searched again are re-scored there, not here
        rows = done.repeat_interleave(k)
        exact = exact_scores(x, self.c, cand[done].flatten(), self.metric, rows=rows).view(len(done), k)
        cand = cand[done]
        order = torch.sort(cand, dim=1, stable=True).indices  # equal scores: the smaller index first
        cand, exact = cand.gather(1, order), exact.gather(1, order)
        order = torch.sort(-exact if self.metric == "ip" else exact, dim=1, stable=True).indices[:, :m]
        idx = torch.empty(len(x), m, dtype=torch.long, device=x.device)
        score = torch.empty(len(x), m, dtype=torch.float32, device=x.device)
        idx[done], score[done] = cand.gather(1, order), exact.gather(1, order)
        deeper = again.nonzero().squeeze(1)
        if len(deeper):
            self.deeper += len(deeper)
            idx[deeper], score[deeper] = self._knn(x[deeper], m, min(k * 2, len(self.c)))
        self.rescored += len(rows)
        return idx, score

    def _nearest(self, x: torch.Tensor, k: int) -> torch.Tensor:
        value, cand, half_band = self._candidates(x, k)
        idx = cand[:, 0].clone()
        if k == 1:
            return idx
        inband = value >= value[:, :1] - 2 * half_band[:, None]
        again = inband[:, -1] & (k < len(self.c))
        tied = inband[:, 1] & ~again
        r, j = (inband & tied[:, None]).nonzero(as_tuple=True)  # the round's one wait for the device
        if len(r):  # every in-band candidate scored exactly; the best wins, ties to the smaller index
            key = exact_scores(x, self.c, cand[r, j], self.metric, rows=r)
            key = key if self.metric == "ip" else -key
            best = torch.full((len(x),), -torch.inf, device=x.device).scatter_reduce(0, r, key, "amax")
            win = key == best[r]
            pick = torch.full_like(idx, len(self.c)).scatter_reduce(0, r[win], cand[r[win], j[win]], "amin")
            idx = torch.where(tied, pick, idx)
            self.rescored += len(r)
        rows = again.nonzero().squeeze(1)
        if len(rows):
            self.deeper += len(rows)
            idx[rows] = self._nearest(x[rows], min(k * GROW, len(self.c)))
        return idx

    def _candidates(self, x: torch.Tensor, k: int):
        """Top-``k`` approximate scores (higher is better), their centroids, and each row's half band."""
        norm = row_norms(x)
        m1 = norm * self.c_max if self.metric == "ip" else self.c_max * (norm + self.c_max / 2)
        m2 = m1 if self.metric == "ip" else (norm + self.c_max) ** 2
        half_band = self._a * m1 + self._b * m2
        if self.backend == "faiss":
            import faiss

            metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
            value, cand = faiss.knn(x.detach().float().contiguous().numpy(),
                                    self.c.float().contiguous().numpy(), k, metric=metric)
            value = torch.from_numpy(value) if self.metric == "ip" else torch.from_numpy(value) / -2
            return value, torch.from_numpy(cand).long(), half_band
        value = torch.empty(len(x), k, dtype=torch.float32, device=x.device)
        cand = torch.empty(len(x), k, dtype=torch.long, device=x.device)
        step = chunk_rows(len(self.c), 4, x.device)
        for lo in range(0, len(x), step):
            v, i = topk(products(x[lo:lo + step], self._c, self.precision, self._bias), k)
            value[lo:lo + step], cand[lo:lo + step] = v, i
        return value, cand, half_band


def nearest(x: torch.Tensor, c: torch.Tensor, metric: str = "ip", backend: str | None = None,
            precision: str | None = None):
    """For each row of ``x``, its nearest row of ``c``: ``(index, score)`` (see :class:`FlatIndex`)."""
    return FlatIndex(c, metric, backend, precision).search(x)
