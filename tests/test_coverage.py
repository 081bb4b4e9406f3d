"""The coverage and boundary selectors (probcover, herding, typiclust, bilaf) and the neighbour
graph they run on: equal to dense transcriptions of the official code; and every registered
selector the same for any number of workers (threads as workers, no Ray)."""

import numpy as np
import pytest
import torch
from reference_coverage import bilaf, maxherding, probcover, typiclust
from sharding import sharded

from activeft.engine import (
    Collectives,
    FlatIndex,
    Pool,
    exact_scores,
    generator,
    greedy_cover,
    k_center_greedy,
    kmeans,
    knn_graph,
    neighbours,
)
from activeft.select import get_selector, list_selectors

pytestmark = pytest.mark.timeout(240)


def blobs(n=300, d=16, k=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(k, d))[rng.integers(0, k, n)] + 0.6 * rng.normal(size=(n, d))
    return torch.from_numpy((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))


def fit(x, method, budget, exclude=(), comm=None, pool=None, **params):
    pool = pool or Pool(x, 0, len(x))
    result = get_selector(method)(seed=0, **params).fit(pool, comm or Collectives(), budget,
                                                         torch.tensor(exclude, dtype=torch.long), None)
    return result.rows.tolist()


def test_neighbours_are_the_exact_sort_with_ties_to_the_smaller_row():
    x = blobs(200)
    x[5] = x[7]  # a duplicate: distance 0 to each other, never to itself
    rows, d2 = neighbours(Pool(x, 0, len(x)), Collectives(), 9)
    full = torch.stack([exact_scores(x, x, torch.full((len(x),), j), "l2") for j in range(len(x))], 1)
    full.fill_diagonal_(torch.inf)
    expected = torch.tensor([sorted(range(len(x)), key=lambda j: (full[i, j].item(), j))[:9] for i in range(len(x))])
    assert torch.equal(rows, expected) and torch.equal(d2, full.gather(1, expected))
    assert rows[5, 0] == 7 and rows[7, 0] == 5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_knn_is_exact_in_every_precision(precision):
    x, c = blobs(150, seed=1), blobs(400, seed=2)
    idx, score = FlatIndex(c, "l2", backend="torch", precision=precision).knn(x, 12)
    ref_idx, ref_score = FlatIndex(c, "l2").knn(x, 12)  # faiss candidates, fp32
    assert torch.equal(idx, ref_idx) and torch.equal(score, ref_score)


def test_inverted_file_graph_finds_most_neighbours_and_ignores_the_sharding(monkeypatch):
    monkeypatch.setattr("activeft.engine.graph.CELL", 100)
    x = torch.nn.functional.normalize(torch.randn(1200, 6, generator=torch.Generator().manual_seed(3)), dim=1)
    exact, _ = knn_graph(Pool(x, 0, len(x)), Collectives(), 10)
    approx, _ = knn_graph(Pool(x, 0, len(x)), Collectives(), 10, candidates=400)  # 12 cells, 4 searched
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.tolist(), exact.tolist(), strict=True)])
    assert 0.75 < recall < 1.0  # approximate (uniform data: the hard case), and a fair approximation
    parts = sharded(lambda pool, comm: knn_graph(pool, comm, 10, candidates=400)[0], x, [0, 500, 700, 1200])
    assert torch.equal(torch.cat(parts), approx)


@pytest.mark.parametrize("method, reach", [("probcover", 2), ("herding", 8)])
def test_default_graph_and_radius_follow_the_budget(method, reach):
    """Each selector keeps reach x N / B neighbours by default, and its radius or bandwidth is the budget radius."""
    x = blobs(600, seed=6)
    result = get_selector(method)(seed=0).fit(Pool(x, 0, len(x)), Collectives(), 20, torch.tensor([], dtype=torch.long),
                                              None)
    d = torch.cdist(x.double(), x.double()).fill_diagonal_(torch.inf).sort(1).values
    assert result.info["neighbours"] == reach * 30
    assert result.info["budget_radius"] == pytest.approx(float(d[:, 29].median()), rel=1e-5)
    assert result.info["bandwidth" if method == "herding" else "delta"] == result.info["budget_radius"]


@pytest.mark.parametrize("labeled", [[], [3, 7]])
def test_probcover_and_herding_are_the_official_greedy(labeled):
    x = blobs()
    everything = len(x) - 1  # every ball / kernel whole, as the official dense graph
    assert fit(x, "probcover", 8, labeled, delta=0.5, neighbours=everything) == probcover(x.numpy(), 8, 0.5, labeled)
    assert fit(x, "herding", 8, labeled, bandwidth=1.0, neighbours=everything) == maxherding(x.numpy(), 8, 1.0,
                                                                                             labeled)


@pytest.mark.parametrize("labeled", [[], [3, 7]])
def test_typiclust_is_the_official_selection_on_the_same_clusters(labeled):
    x = blobs()
    centroids, _ = kmeans(Pool(x, 0, len(x)), Collectives(), len(labeled) + 12, init="kmeans||", seed=0)
    clusters = FlatIndex(centroids, "l2").search(x, scores=False)[0].numpy()
    assert fit(x, "typiclust", 12, labeled) == typiclust(x.numpy(), 12, clusters, labeled)
    # beyond max_clusters the clusters are visited again: still exact (the lists hold the extra picks)
    centroids, _ = kmeans(Pool(x, 0, len(x)), Collectives(), 5, init="kmeans||", seed=0)
    clusters = FlatIndex(centroids, "l2").search(x, scores=False)[0].numpy()
    assert fit(x, "typiclust", 23, max_clusters=5) == typiclust(x.numpy(), 23, clusters)


@pytest.mark.parametrize("denoise", ["official", "nearest"])
def test_bilaf_is_the_official_boundary_selection_on_the_same_cores(denoise):
    x = blobs()
    core = fit(x, "kmeans", 6)
    chosen = fit(x, "bilaf", 30, core="kmeans", cores=0.2, denoise=denoise)
    assert chosen == bilaf(x.numpy(), sorted(core), 30, official_knn_bug=denoise == "official")
    assert set(core) <= set(chosen)


@pytest.mark.parametrize("method", list_selectors())
def test_three_workers_select_the_same_as_one(method):
    cls = get_selector(method)
    if not cls.worker_invariant:
        pytest.skip(f"{method} declares worker_invariant = False")
    params = cls.test_params
    x = blobs(360, seed=4)
    one = fit(x, method, 20, [11, 12], **params)
    parts = sharded(lambda pool, comm: fit(x, method, 20, [11, 12], comm=comm, pool=pool, **params), x,
                    [0, 100, 250, 360])
    assert all(p == one for p in parts) and len(set(one)) == 20 and not {11, 12} & set(one)


def sequential_cover(rows, w, budget, exclude=()):
    """The plain greedy over the whole graph (each row's edges plus itself at weight 1): every gain recomputed
    per pick, the highest first, ties to the smaller row (the greedy before exchanges were batched)."""
    t = np.concatenate([np.arange(len(rows))[:, None], rows.clamp(min=0).numpy()], 1)
    wt = np.concatenate([np.ones((len(rows), 1)), np.where(rows.numpy() >= 0, w.numpy(), 0.0)], 1)
    cover, taken, picks = np.zeros(len(rows)), np.zeros(len(rows), bool), []
    for i in exclude:
        np.maximum.at(cover, t[i], wt[i])
        taken[i] = True
    for _ in range(budget):
        gain = np.where(taken, -np.inf, np.clip(wt - cover[t], 0, None).sum(1))
        i = int(np.argmax(gain))  # the first maximum: the smaller row
        assert gain[i] > 0, "the graph is covered: a smaller budget"
        picks.append(i)
        taken[i] = True
        np.maximum.at(cover, t[i], wt[i])
    return picks


class Counting(Collectives):
    gathers = 0

    def all_gather(self, t):
        self.gathers += 1
        return super().all_gather(t)


@pytest.mark.parametrize("batch", [1, 4, 64])
def test_batched_greedy_picks_the_sequential_greedys_rows(batch):
    """Kernel weights, and 0/1 ball weights (integer gains, many ties): the same picks for any batch and any
    number of workers (one of them without rows), with far fewer exchanges than picks."""
    x = blobs(360, seed=4)
    rows, d2 = knn_graph(Pool(x, 0, len(x)), Collectives(), 40)
    for w in (torch.exp(-d2.double() / 0.3), (d2 <= 0.4).double()):
        expected = sequential_cover(rows, w, 40, exclude=[5, 17])
        comm = Counting()
        one = greedy_cover(Pool(x, 0, len(x)), comm, rows, w, 40, generator(0), [5, 17], batch=batch)[0]
        assert one.tolist() == expected, comm.gathers
        assert comm.gathers <= (40 if batch == 1 else 20)
        parts = sharded(lambda pool, c, w=w: greedy_cover(pool, c, rows[pool.offset:pool.offset + len(pool.x)],
                                                          w[pool.offset:pool.offset + len(pool.x)], 40, generator(0),
                                                          [5, 17], batch=batch)[0].tolist(), x, [0, 100, 100, 250, 360])
        assert all(p == expected for p in parts)


def test_a_ranks_cover_follows_its_edges_not_the_pool():
    """A rank holds the cover of the rows its edges reach: rows 10^12 on, of a pool of 3 x 10^12 rows (an O(N)
    cover would be 24 TB), pick what the sequential greedy picks on the same graph."""
    x = blobs(360, seed=4)
    rows, d2 = knn_graph(Pool(x, 0, len(x)), Collectives(), 40)
    w = torch.exp(-d2.double() / 0.3)
    far = 10**12
    picks = greedy_cover(Pool(x, far, 3 * far), Collectives(), rows + far, w, 40, generator(0), [far + 5, far + 17])[0]
    assert (picks - far).tolist() == sequential_cover(rows, w, 40, exclude=[5, 17])


def test_bilaf_fills_a_class_short_of_its_share_farthest_first(caplog):
    """Tiny pseudo-classes can get a larger share than their rows; the missing picks come farthest-first."""
    x = blobs(40, seed=1)
    rows = fit(x, "bilaf", 30, core="kmeans", cores=0.5)
    assert len(set(rows)) == 30 and "hold 28 of the 30 rows to pick" in caplog.text
    rest = k_center_greedy(Pool(x, 0, len(x)), Collectives(), 2, generator(0), rows[:28], tag="test")
    assert rows[28:] == rest.tolist()


def test_a_covered_graph_goes_on_farthest_first(caplog):
    x = blobs(60, seed=5)
    rows = fit(x, "probcover", 40, delta=1.9, neighbours=59)  # one ball holds nearly everything
    assert len(set(rows)) == 40 and "the graph is covered after" in caplog.text


def test_probcover_purity_rule_is_the_papers_largest_pure_radius():
    from reference_coverage import purity_delta

    from activeft.select.probcover import GRID

    x = blobs()
    centroids, _ = kmeans(Pool(x, 0, len(x)), Collectives(), 6, init="kmeans||", seed=0)
    labels = FlatIndex(centroids, "l2").search(x, scores=False)[0].numpy()
    result = get_selector("probcover")(seed=0, purity=0.95, classes=6, neighbours=len(x) - 1).fit(
        Pool(x, 0, len(x)), Collectives(), 8, torch.zeros(0, dtype=torch.long), None)
    assert result.info["delta"] == pytest.approx(purity_delta(x.numpy(), labels, GRID, alpha=0.95))
