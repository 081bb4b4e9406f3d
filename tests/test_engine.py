"""The engine's reduced-precision search, float16 pools and k-means|| seeding.

Every precision must pick the rows exact scoring picks (adversarial near ties included); sharded
runs are simulated in-process by threads whose collectives meet at a barrier.
"""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sharding import sharded

from activeft.engine import (
    Collectives,
    Pool,
    greedy_unique,
    kmeans,
    kmeans_parallel,
    lloyd,
    row_uniforms,
    search,
    seed_rows,
)
from activeft.select.activeft import loss_and_grad

pytestmark = pytest.mark.timeout(240)
PRECISIONS = ["fp32", "tf32", "bf16"]  # on CPU "tf32" runs as fp32


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def crowded(n=1500, d=32, seed=0):
    """Rows and centroids with adversarial near ties: groups of 12 centroids within 1e-5..1e-2 of
    each other (more than the first round's 8 candidates), exact duplicates, rows on centroids."""
    g = torch.Generator().manual_seed(seed)
    base = unit(10, d, seed + 1)
    spread = torch.tensor([0.0, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2]).repeat(2)[:, None]
    c = F.normalize((base[:, None, :] + spread * torch.randn(10, 12, d, generator=g)).flatten(0, 1), dim=1)
    c = torch.cat([c, unit(40, d, seed + 2)])
    x = F.normalize(base[torch.randint(10, (n,), generator=g)] + 0.02 * torch.randn(n, d, generator=g), dim=1)
    x[:50] = c[torch.randint(len(c), (50,), generator=g)]
    return x, c


def exact_best(x, c, metric):
    """Brute force on exact scores: the best centroid of each row, ties to the smaller index."""
    rows, idx = torch.arange(len(x)).repeat_interleave(len(c)), torch.arange(len(c)).repeat(len(x))
    s = search.exact_scores(x, c, idx, metric, rows=rows).view(len(x), len(c))
    s = s if metric == "ip" else -s
    return (s == s.max(1, keepdim=True).values).float().argmax(1)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_error_bound_holds_on_adversarial_inputs(metric, precision):
    # every component rounds by almost half a bf16 ulp in the same direction, and c = x: the errors add up
    d = 384
    lo = torch.tensor(d ** -0.5).bfloat16().float()
    hi = torch.nextafter(lo.bfloat16(), torch.tensor(1.0).bfloat16()).float()
    v = lo + (hi - lo) * 0.499  # rounds down by almost half an ulp
    x = torch.full((4, d), float(v)) * torch.tensor([1.0, -1.0]).repeat(d // 2)
    x = torch.cat([x, unit(200, d, 3)])
    c = torch.cat([x[:4], unit(50, d, 4)])
    truth = x.double() @ c.double().T
    if metric == "l2":
        truth = truth - (c.double() ** 2).sum(1) / 2
    bias = None if metric == "ip" else (c ** 2).sum(1) / -2
    approx = search.products(x, c, precision, bias).double()
    a, b = search.band_factors(precision, metric, d)
    norm, c_max = x.norm(dim=1, keepdim=True).double(), c.norm(dim=1).max().double()
    m1 = norm * c_max if metric == "ip" else c_max * (norm + c_max / 2)
    m2 = m1 if metric == "ip" else (norm + c_max) ** 2
    assert ((approx - truth).abs() <= a * m1 + b * m2).all()
    if precision == "bf16":  # the bound is not loose by orders of magnitude where errors align
        assert (approx - truth).abs()[:4, :4].max() > 0.2 * (a * m1)[:4].max()
    exact = search.exact_scores(x, c, torch.arange(len(c)).repeat(len(x)), metric,
                                rows=torch.arange(len(x)).repeat_interleave(len(c))).double().view(len(x), -1)
    truth_exact = truth if metric == "ip" else ((x.double()[:, None] - c.double()[None]) ** 2).sum(-1)
    assert ((exact - truth_exact).abs() <= b * m2 * (1 if metric == "ip" else 2)).all()


@pytest.mark.parametrize("n", [100, 700, 2000])
def test_grouped_topk_is_torch_topk(n):
    s = torch.randn(40, n, generator=torch.Generator().manual_seed(n))
    s[:, 3] = s[:, 600 % n]  # ties
    for k in (1, 2, 8, 16):
        v, i = search.topk(s, k)
        assert torch.equal(v, s.topk(k, dim=1).values) and torch.equal(s.gather(1, i), v)


def test_exact_scores_are_the_same_bits_for_any_chunk_or_order(monkeypatch):
    x, c = unit(500, 100, 0), unit(30, 100, 1)
    idx = torch.randint(30, (500,), generator=torch.Generator().manual_seed(2))
    whole = search.exact_scores(x, c, idx)
    monkeypatch.setattr(search, "CHUNK_BYTES", 4096)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(3))
    assert torch.equal(search.exact_scores(x, c, idx[perm], rows=perm), whole[perm])
    assert torch.equal(search.exact_scores(x[7:8], c, idx[7:8]), whole[7:8])


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("chunk_bytes", [search.CHUNK_BYTES, 8192])
def test_every_precision_finds_the_exact_nearest(monkeypatch, metric, chunk_bytes):
    monkeypatch.setattr(search, "CHUNK_BYTES", chunk_bytes)
    x, c = crowded()
    best = exact_best(x, c, metric)
    deeper = {}
    for precision in PRECISIONS:
        for x_in in (x, x.half()):
            ref = exact_best(x_in.float(), c, metric) if x_in.dtype == torch.float16 else best
            index = search.FlatIndex(c, metric, precision=precision)
            idx, score = index.search(x_in)
            assert torch.equal(idx, ref), (precision, x_in.dtype)
            assert torch.equal(score, search.exact_scores(x_in, c, ref, metric))
            deeper[precision] = index.deeper
    torch_fp32 = search.FlatIndex(c, metric, backend="torch", precision="fp32").search(x)[0]
    assert torch.equal(torch_fp32, best)
    assert deeper["bf16"] > 0  # groups of 12 near-equal centroids overflow the first 8 candidates


def test_precision_names_and_defaults():
    assert search.default_precision("cpu") == "fp32" and search.default_precision("cuda") == "tf32"
    assert search.resolve_precision("tf32", "cpu") == "fp32"  # no TF32 units on CPU
    assert search.resolve_precision(None, "cpu") == "fp32" and search.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of 'fp32', 'tf32', 'bf16'"):
        search.resolve_precision("fp8", "cpu")
    assert search.FlatIndex(unit(5, 4, 0), precision="bf16").backend == "torch"


def test_activeft_step_is_the_same_in_every_precision_and_for_float16():
    x, c = crowded(n=1200, d=24)
    theta = c[:40] + 0.01 * torch.randn(40, 24, generator=torch.Generator().manual_seed(5))
    fixed = c[100:103]
    ref = loss_and_grad(Pool(x, 0, len(x)), Collectives(), theta, fixed, None, len(x), 0.07, 1.0)
    rows = torch.arange(0, 1200, 3)
    ref_batch = loss_and_grad(Pool(x, 0, len(x)), Collectives(), theta, fixed, rows, len(rows), 0.07, 1.0)
    for precision in PRECISIONS:
        pool = Pool(x, 0, len(x), precision)
        loss, grad = loss_and_grad(pool, Collectives(), theta, fixed, None, len(x), 0.07, 1.0)
        assert loss == ref[0] and torch.equal(grad, ref[1]), precision
        loss, grad = loss_and_grad(pool, Collectives(), theta, fixed, rows, len(rows), 0.07, 1.0)
        assert loss == ref_batch[0] and torch.equal(grad, ref_batch[1]), precision
    half = x.half()
    ref_half = loss_and_grad(Pool(half.float(), 0, len(x)), Collectives(), theta, fixed, None, len(x), 0.07, 1.0)
    loss, grad = loss_and_grad(Pool(half, 0, len(x), "bf16"), Collectives(), theta, fixed, None, len(x), 0.07, 1.0)
    assert loss == ref_half[0] and torch.equal(grad, ref_half[1])


def brute_greedy(x, c):
    """The official mapping on exact scores: centroids in order, each its best free row (ties: smaller)."""
    rows, idx = torch.arange(len(x)).repeat(len(c)), torch.arange(len(c)).repeat_interleave(len(x))
    s = search.exact_scores(x, c, idx, rows=rows).view(len(c), len(x))
    taken, out = set(), []
    for row in torch.argsort(s, dim=1, descending=True, stable=True):
        out.append(next(int(r) for r in row if int(r) not in taken))
        taken.add(out[-1])
    return out


@pytest.mark.parametrize("candidates", [1, 16])
def test_mapping_is_the_same_in_every_precision(monkeypatch, candidates):
    monkeypatch.setattr(search, "CHUNK_BYTES", 16384)
    x, c = crowded(n=600, d=16)
    c = c[:80]  # groups of near-equal centroids all wanting the same rows
    ref = brute_greedy(x, c)
    for precision in PRECISIONS:
        for pool_x in (x, x.half()):
            want = brute_greedy(pool_x.float(), c) if pool_x.dtype == torch.float16 else ref
            rows, sims = greedy_unique(Pool(pool_x, 0, len(x), precision), Collectives(), c, candidates=candidates)
            assert rows.tolist() == want, (precision, pool_x.dtype)
            assert torch.equal(sims, search.exact_scores(pool_x, c, torch.arange(len(c)), rows=rows))
    rows, _ = greedy_unique(Pool(x, 0, len(x), "bf16"), Collectives(), c, taken=ref[:5], candidates=candidates)
    assert not set(rows.tolist()) & set(ref[:5])


def test_kmeans_is_the_same_in_every_precision_and_for_float16():
    x, _ = crowded(n=1000, d=16)
    ref = kmeans(Pool(x, 0, len(x)), Collectives(), 25, iterations=15, tol=0.0, seed=3, init="kmeans||")
    for precision in PRECISIONS:
        c, history = kmeans(Pool(x, 0, len(x), precision), Collectives(), 25, iterations=15, tol=0.0, seed=3,
                            init="kmeans||")
        assert torch.equal(c, ref[0]) and history == ref[1], precision
    half = x.half()
    ref = kmeans(Pool(half.float(), 0, len(x)), Collectives(), 25, iterations=10, seed=1)
    c, history = kmeans(Pool(half, 0, len(x), "bf16"), Collectives(), 25, iterations=10, seed=1)
    assert torch.equal(c, ref[0]) and history == ref[1]


def test_row_uniforms_do_not_depend_on_the_sharding():
    x = torch.zeros(300, 2)
    whole = row_uniforms(Pool(x, 0, 300), torch.Generator().manual_seed(0), block=64)
    parts = [row_uniforms(Pool(x[lo:hi], lo, 300), torch.Generator().manual_seed(0), block=64)
             for lo, hi in ((0, 70), (70, 71), (71, 300))]
    assert torch.equal(torch.cat(parts), whole)


@pytest.mark.parametrize("exclude", [(), tuple(range(0, 900, 7))])
def test_kmeans_parallel_is_the_same_for_one_and_three_workers(exclude):
    x, _ = crowded(n=900, d=16)
    x = torch.cat([x, x[:40]])  # duplicate rows

    def seeds(pool, comm):
        return kmeans_parallel(pool, comm, 30, torch.Generator().manual_seed(4), exclude, oversampling=1.5)

    one = seeds(Pool(x, 0, len(x)), Collectives())
    assert len(one) == 30 and len(set(one.tolist())) == 30 and not set(one.tolist()) & set(exclude)
    for bounds in ([0, 300, 301, len(x)], [0, 500, len(x)]):
        for precision in ("fp32", "bf16"):
            for result in sharded(seeds, x, bounds, precision):
                assert torch.equal(result, one), (bounds, precision)


def test_kmeans_is_the_same_for_one_and_two_workers():
    x, _ = crowded(n=800, d=16)

    def fit(pool, comm):
        return kmeans(pool, comm, 20, iterations=10, seed=2, init="kmeans||")

    one = fit(Pool(x, 0, len(x)), Collectives())
    for c, history in sharded(fit, x, [0, 333, 800]):
        np.testing.assert_allclose(history, one[1], rtol=1e-12)
        assert torch.equal(c, one[0])


def clusters(n, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * torch.rand(k, 1, generator=g) * 4
    sizes = torch.randint(1, 50, (k,), generator=g).float()
    x = centres[torch.multinomial(sizes, n, replacement=True, generator=g)] + torch.randn(n, d, generator=g)
    return F.normalize(x, dim=1)


def test_kmeans_parallel_quality_matches_kmeans_plusplus():
    x = clusters(4000, 60, 24, 0)
    pool = Pool(x, 0, len(x))
    inertia = {}
    for name in ("kmeans++", "kmeans||", "random"):
        runs = []
        for seed in range(3):
            seeds = seed_rows(pool, Collectives(), 60, torch.Generator().manual_seed(seed), init=name)
            _, history = lloyd(pool, Collectives(), pool.gather_rows(seeds, Collectives()), 20, 0.0,
                               torch.Generator().manual_seed(seed))
            runs.append((history[0], history[-1]))  # the seeds' inertia, and after 20 Lloyd iterations
        inertia[name] = np.mean(runs, axis=0)
    assert (inertia["kmeans||"] <= 1.03 * inertia["kmeans++"]).all()
    assert (inertia["kmeans||"] < inertia["random"]).all()


def test_kmeans_parallel_passes_do_not_grow_with_k(monkeypatch):
    x = clusters(3000, 40, 16, 1)
    calls = []
    original = search.FlatIndex.search
    monkeypatch.setattr(search.FlatIndex, "search", lambda self, q, scores=True: calls.append(len(q))
                        or original(self, q, scores))
    pool = Pool(x, 0, len(x))
    for k in (5, 200):
        calls.clear()
        assert len(kmeans_parallel(pool, Collectives(), k, torch.Generator().manual_seed(0), rounds=5)) == k
        assert calls.count(len(x)) <= 5  # rounds - 1 distance updates + the weighting pass
    with pytest.raises(ValueError, match=re.escape("unknown seeding 'kmeans+'; available: kmeans++, kmeans||, random")):
        seed_rows(pool, Collectives(), 3, torch.Generator(), init="kmeans+")


def test_store_float16_reads_without_conversion(tmp_path):
    import activeft

    x = unit(50, 8, 0).numpy()
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(f"r{i}" for i in range(50)))
    store = activeft.import_embeddings(str(tmp_path / "x.npy"), str(tmp_path / "s"), ids=str(tmp_path / "ids.txt"),
                                       dtype="float16")
    half = store.embeddings(3, 9, dtype="float16")
    assert store.dtype == "float16" and half.dtype == np.float16
    np.testing.assert_array_equal(half.astype(np.float32), store.embeddings(3, 9))
    from activeft.runtime.runner import load_pool

    pool = load_pool(store, 0, 1, "cpu", precision="bf16")  # CPU keeps float32, as before
    assert pool.x.dtype == torch.float32 and pool.precision == "bf16"


@pytest.mark.parametrize("n", [50_000, 60_000, 16_383, 7])
def test_worker_ranges_hold_every_row_once(n):
    from activeft.io.store import EmbeddingStore

    pool = type("Pool", (), {"__len__": lambda self: n})()
    for world in (1, 2, 3, 5):
        bounds = [EmbeddingStore.worker_range(pool, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n  # 50,000 rows on one worker once held 49,152
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
