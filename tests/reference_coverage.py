"""Dense numpy transcriptions of the official ProbCover, TypiClust, MaxHerding and BiLAF code, kept as oracles.

Small-n references (O(n^2) memory) for testing the scalable sharded selectors. Every function takes
rows ``x`` of shape (n, d), already L2-normalised, and returns selected row indices in selection
order. Where an official script walks "relevant" indices ``concat(lSet, uSet)``, the transcription
uses ``labeled`` (in the given order) followed by the unlabeled rows in ascending order, so every
"first maximum" tie rule means: labeled rows first, then the smallest unlabeled row index.
Not part of the package. Notes with sources: /tmp/research14.md.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

# --------------------------------------------------------------------------------------------------
# helpers


def _relevant(n: int, labeled) -> tuple[np.ndarray, int]:
    """Official ordering ``concat(lSet, uSet)``: labeled rows first, then unlabeled rows ascending."""
    labeled = np.asarray(list(labeled), dtype=int)
    rest = np.setdiff1d(np.arange(n), labeled)
    return np.concatenate([labeled, rest]).astype(int), len(labeled)


def _euclid(x: np.ndarray) -> np.ndarray:
    return cdist(x, x, "euclidean")


# --------------------------------------------------------------------------------------------------
# ProbCover


def probcover(x, budget, delta, labeled=(), graph_batch_size=None):
    """Greedy ProbCover, transcribed from ``ProbCover.construct_graph`` / ``select_samples``.

    Official: github.com/avihu111/TypiClust ``deep-al/pycls/al/prob_cover.py`` (HEAD 4097a71c;
    last changed 2e14a16, 2022-10-27); identical greedy in BorealisAI/uherding (75299cd2).

    * Graph: directed edge a->b iff ``torch.cdist(a, b) < delta`` (strict, Euclidean on the
      L2-normalised features). Self-loops are kept (d(a, a) = 0 < delta).
    * Labeled rows: every target of an edge from a labeled row is "covered"; all edges into covered
      rows are dropped (so labeled rows end with out-degree 0).
    * Each step: ``degrees = np.bincount(cur_df.x, minlength=n)``; ``cur = degrees.argmax()``
      (first maximum in relevant order); drop all edges into the rows ``cur`` newly covers.
    * Max degree 0 (everything reachable covered): argmax returns relevant position 0, i.e.
      ``labeled[0]`` if any, else the smallest unlabeled row, and it is appended again and again
      (duplicates / a labeled row in the output). Reproduced as is; callers truncate if they wish.
    * ``graph_batch_size``: the official loop is ``for i in range(n // batch_size)`` (500 in
      TypiClust, 1536 in uherding), so the last ``n % batch_size`` relevant rows get NO outgoing
      edges (they can still be covered). ``None`` (default) builds the intended full graph; pass
      500 to reproduce the official graph exactly (for n < 500 that graph is empty).
    Deviation: float64 scipy distances instead of float32 torch.cdist (matters only at |d - delta| ~ 1e-7).
    """
    x = np.asarray(x, dtype=np.float64)
    rel, n_lab = _relevant(len(x), labeled)
    adj = _euclid(x[rel]) < delta  # adj[a, b]: edge a -> b
    if graph_batch_size is not None:
        adj[(len(rel) // graph_batch_size) * graph_batch_size:] = False
    covered = adj[:n_lab].any(axis=0)
    selected = []
    for _ in range(budget):
        degrees = adj[:, ~covered].sum(axis=1)
        cur = int(np.argmax(degrees))
        covered |= adj[cur]
        selected.append(cur)
    return rel[selected].tolist()


def purity_delta(x, cluster_labels, deltas, alpha=0.95, return_purities=False):
    """ProbCover's delta rule: the largest delta whose ball purity is >= alpha.

    Paper (Yehuda et al. 2022, "choosing delta"): ball B_delta(v) is pure if every point in it has
    v's pseudo-label (k-means with k = number of classes); purity(delta) = fraction of points whose
    ball is pure; take the largest delta with purity >= alpha = 0.95. The TypiClust repo ships no
    code for it; this follows the re-implementation ``compute_purity``/``blob_purity`` in
    github.com/BorealisAI/uherding ``deep-al/pycls/utils/metrics.py`` (ball = ``dist < radius``,
    strict; grid ``np.linspace(0.05, 1.0, 20)``; MiniBatchKMeans(n_classes) on L2-normalised
    features), which returns the radius just before the first grid value with purity < alpha.
    Purity is non-increasing in delta, so that equals "largest delta with purity >= alpha".
    Deviations from uherding's edge cases: if no delta qualifies we return None (uherding returns
    grid[-1] through ``radiuses[r-1]`` with r = 0); if all qualify we return max(deltas) (uherding
    returns 0). Returns (delta, purities) if ``return_purities``.
    """
    x = np.asarray(x, dtype=np.float64)
    lab = np.asarray(cluster_labels)
    dist = _euclid(x)
    impure = lab[:, None] != lab[None, :]
    deltas = np.sort(np.asarray(deltas, dtype=np.float64))
    purities = np.array([1.0 - ((dist < d) & impure).any(axis=1).mean() for d in deltas])
    ok = np.nonzero(purities >= alpha)[0]
    best = float(deltas[ok.max()]) if len(ok) else None
    return (best, purities) if return_purities else best


# --------------------------------------------------------------------------------------------------
# TypiClust


def typiclust(x, budget, cluster_labels, labeled=(), k_nn=20, min_cluster_size=5):
    """TypiClust selection given the clustering, transcribed from ``TypiClust.select_samples``.

    Official: github.com/avihu111/TypiClust ``deep-al/pycls/al/typiclust.py`` (HEAD 4097a71c);
    same in BorealisAI/uherding. Official clustering (not done here): number of clusters
    ``min(len(lSet) + budget, MAX_NUM_CLUSTERS=500)``, sklearn ``KMeans`` if <= 50 clusters else
    ``MiniBatchKMeans(batch_size=5000)``, on L2-normalised features (or SCAN for ``typiclust_dc``).

    * Clusters with size (labeled rows included) ``> min_cluster_size`` (strict) are kept; sorted by
      (#labeled in cluster ascending, size descending); pandas multi-key sort is stable, so remaining
      ties go by cluster id ascending. The order is fixed once; step i takes cluster
      ``order[i % len(order)]`` (round robin, not re-sorted after picks).
    * Candidates: rows of that cluster not labeled and not yet picked. Typicality over the
      candidates only: k = ``min(k_nn, len(candidates) // 2)``; faiss IndexFlatL2 returns SQUARED
      L2 distances; search k+1 and drop column 0 (self); ``typicality = 1 / (mean + 1e-5)``;
      pick ``indices[typicality.argmax()]`` (first maximum = smallest row in relevant order).
    * k = 0 (one candidate left): official mean of an empty slice is nan and argmax of [nan] is
      0, so that sole row is taken; reproduced. No candidate left: official crashes; we raise.
    Deviations: float64 instead of faiss float32; labeled counts per cluster id via bincount over
    the ids (the official ``bincount(minlength=len(cluster_ids))`` misaligns or crashes when ids are
    not exactly 0..K-1; identical otherwise).
    """
    x = np.asarray(x, dtype=np.float64)
    rel, n_lab = _relevant(len(x), labeled)
    feats = x[rel]
    labels = np.asarray(cluster_labels)[rel].copy()
    cluster_ids, sizes = np.unique(labels, return_counts=True)
    existing = np.bincount(np.searchsorted(cluster_ids, labels[:n_lab]), minlength=len(cluster_ids))
    keep = sizes > min_cluster_size
    cluster_ids, sizes, existing = cluster_ids[keep], sizes[keep], existing[keep]
    order = cluster_ids[np.lexsort((cluster_ids, -sizes, existing))]
    if len(order) == 0:
        raise ValueError("no cluster larger than min_cluster_size (official: modulo by zero)")
    labels = labels.astype(np.int64)
    sentinel = -1 if labels.min() >= 0 else labels.min() - 1
    labels[:n_lab] = sentinel
    selected = []
    for i in range(budget):
        cluster = order[i % len(order)]
        indices = np.nonzero(labels == cluster)[0]
        if len(indices) == 0:
            raise ValueError(f"cluster {cluster} exhausted (official code crashes here)")
        k = min(k_nn, len(indices) // 2)
        if k == 0:
            idx = indices[0]
        else:
            sq = cdist(feats[indices], feats[indices], "sqeuclidean")
            sq.sort(axis=1)
            typicality = 1.0 / (sq[:, 1:k + 1].mean(axis=1) + 1e-5)
            idx = indices[int(np.argmax(typicality))]
        selected.append(idx)
        labels[idx] = sentinel
    return rel[selected].tolist()


# --------------------------------------------------------------------------------------------------
# MaxHerding


def maxherding(x, budget, sigma=1.0, labeled=()):
    """Greedy MaxHerding (generalised coverage), transcribed from ``Herding.select_samples``.

    Official: github.com/BorealisAI/uherding (commit 75299cd2, 2025-04-23; the README says the repo
    also holds the MaxHerding code of Bae, Noh, Sutherland, ECCV 2024) ``deep-al/pycls/al/herding.py``
    with ``kernel=rbf`` (``RBFKernel``) and ``delta=1.0`` (``deep-al/tools/scripts/run_budget.sh``).

    * Features re-normalised to unit L2; kernel ``k(a, b) = exp(-(||a - b|| / sigma) ** 2)`` with
      sigma = the ``--delta`` argument (so it is exp(-d^2 / sigma^2), NOT exp(-d^2 / (2 sigma^2))).
    * ``max_embedding`` = max over labeled rows of k(labeled, .) (zeros if none).
    * Each step: gain[c] = mean_j max(k(c, j) - max_embedding[j], 0) over ALL relevant rows j
      (labeled included, c itself included); gain of labeled / already selected rows = -inf;
      ``torch.argmax`` (first maximum); ``max_embedding = max(max_embedding, k(c, .))``.
    Deviations: the official ``permute=True`` shuffles uSet (np.random.permutation) and keeps only
    ``compute_cand_size(l, b)`` (<= 35000) of it; coverage is then averaged over lSet + that subset
    only, and ties break in the shuffled order. Here all rows are used, ties -> smallest row.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    rel, n_lab = _relevant(len(x), labeled)
    kern = np.exp(-((_euclid(x[rel]) / sigma) ** 2))
    max_emb = kern[:n_lab].max(axis=0) if n_lab else np.zeros(len(rel))
    taken = np.zeros(len(rel), dtype=bool)
    taken[:n_lab] = True
    selected = []
    for _ in range(budget):
        gain = np.maximum(kern - max_emb[None, :], 0.0).mean(axis=1)
        gain[taken] = -np.inf
        cur = int(np.argmax(gain))
        taken[cur] = True
        max_emb = np.maximum(max_emb, kern[cur])
        selected.append(cur)
    return rel[selected].tolist()


# --------------------------------------------------------------------------------------------------
# BiLAF


def _distribute_budget(budget, proportions):
    """``distribute_budget`` verbatim: floor shares, then +1 to the smallest allocation (ties: larger
    proportion, then first index) until the budget is used."""
    proportions = np.array(proportions)
    proportions = 1.0 * proportions / proportions.sum()
    allocations = np.floor(proportions * budget).astype(int)
    remaining = budget - allocations.sum()
    while remaining > 0:
        cur = 0
        for i in range(len(allocations)):
            if (allocations[i] < allocations[cur]) or (
                    allocations[i] == allocations[cur] and proportions[i] > proportions[cur]):
                cur = i
        allocations[cur] += 1
        remaining -= 1
    return allocations


def bilaf(x, core, budget, density_nearest_number=10, remove_percentage=0.1, cycle_percentage=0.1,
          same_oppo_penalty_ratio=1.1, official_knn_bug=True):
    """BiLAF boundary selection after the core (ActiveFT) rows; returns core + boundary rows.

    Official: github.com/Thinklab-SJTU/BiLAF (HEAD de1501fb, 2025-02-11)
    ``data_selection/Boundary_Selection/density_cluster.py`` (CIFAR; defaults above;
    ``density_cluster_imagenet.py`` differs only by ``remove_percentage=0.2`` and an early exit
    for a class allocation of 1 that yields the same result). ``budget`` is the TOTAL number of rows
    (cores included); ``core`` in the official order (ActiveFT writes them sorted ascending).

    1. Pseudo-classes: every row goes to its nearest core (Euclidean; argmin, first on ties).
    2. Denoise each pseudo-class with >= 10 members (smaller ones are left untouched, in row
       order): m = max(1, int(n_c * cycle_percentage)); ring 1 = the m members nearest the core
       (sort by (distance, local index)); rings 2..int(n_c / m): among unassigned members take the m
       with the smallest "mean distance to the nearest ``density_nearest_number`` members of the
       grown set" (ties by local index). Members never reached are dropped, then the last
       ``1 - int(len * (1 - remove_percentage))`` of the grown order are dropped. The kept list is
       in grown order (it orders later tie breaks).
       OFFICIAL BUG reproduced when ``official_knn_bug``: positions from
       ``np.argsort(D[i][cluster])[:k]`` index ``D[i]`` directly, i.e. the mean is over the
       distances to local members whose local index equals those positions, not to the k nearest.
    3. Allocation: ``distribute_budget(budget, sizes after denoising)``; each class's allocation
       counts its core. Allocation 0 crashes the official code (int(n / 0)); we raise.
    4. Per class (in core order): inner[i] = mean distance to all kept members (self included);
       outer[i] = min distance to the OTHER cores, opp[i] = that core (argmin); penalty = 1 per class.
       list = [core]; candidates = all members (core included); r = int(n_c / allocation).
       While len(list) < allocation: node = list[-1]; sort candidates by (d(node, .), local index)
       and drop the first r (node itself is among them); if node is not the core,
       penalty[opp[node]] *= same_oppo_penalty_ratio; score = (outer * penalty[opp] - inner) /
       max(outer, inner); append the candidate with the LOWEST score (np.argmin over candidates in
       their distance-to-node order, first on ties).
    5. Output: concatenation over classes of [core, boundary picks...] as global rows.
    Deviation: the official boundary stage runs on the RAW DINO features (extract_feature.py does
    not normalise; only ActiveFT normalises); here ``x`` is whatever the caller passes.
    """
    x = np.asarray(x, dtype=np.float64)
    core = np.asarray(list(core), dtype=int)
    nums = len(core)
    core_feats = x[core]
    nearest = np.argmin(cdist(x, core_feats, "euclidean"), axis=1)
    members = [list(np.nonzero(nearest == c)[0]) for c in range(nums)]

    # step 1: density denoising
    for c in range(nums):
        idx = members[c]
        n_c = len(idx)
        if n_c < 10:
            continue
        core_local = idx.index(core[c])
        dm = cdist(x[idx], x[idx], "euclidean")
        m = int(n_c * cycle_percentage) or 1
        level = np.zeros(n_c)
        order = np.lexsort((np.arange(n_c), dm[core_local]))
        cluster = [int(i) for i in order[:m]]
        level[cluster] = 1
        for itrs in range(2, int(n_c / m) + 1):
            cand = [i for i in range(n_c) if level[i] == 0]
            if not cand:
                break
            scores = []
            for i in cand:
                row = dm[i][cluster]
                pos = np.argsort(row)[:density_nearest_number]
                scores.append(np.mean(dm[i][pos]) if official_knn_bug else np.mean(row[pos]))
            pick = np.lexsort((np.array(cand), np.array(scores)))[:m]
            new = [cand[p] for p in pick]
            level[new] = itrs
            cluster.extend(new)
        cluster = cluster[:int(len(cluster) * (1 - remove_percentage))]
        members[c] = [idx[i] for i in cluster]

    # step 2/3: allocation and iterative boundary selection
    allocations = _distribute_budget(budget, [len(m) for m in members])
    out = []
    for c in range(nums):
        idx = members[c]
        n_c = len(idx)
        if core[c] not in idx:
            raise ValueError(f"core {core[c]} was removed by denoising (official code breaks here)")
        if allocations[c] == 0:
            raise ValueError(f"class {c} got allocation 0 (official: int(n / 0) overflow)")
        feats = x[idx]
        inner_dm = cdist(feats, feats, "euclidean")
        inner = inner_dm.mean(axis=1)
        outer_dm = cdist(feats, core_feats, "euclidean")
        outer_dm[:, c] = 1e9 + 7
        outer = outer_dm.min(axis=1)
        opp = outer_dm.argmin(axis=1)
        penalty = np.ones(nums)
        core_local = idx.index(core[c])
        chosen = [core_local]
        r = int(n_c / allocations[c])
        cand = np.arange(n_c)
        while len(chosen) < allocations[c]:
            node = chosen[-1]
            cand = cand[np.lexsort((cand, inner_dm[node][cand]))][r:]
            if node != core_local:
                penalty[opp[node]] *= same_oppo_penalty_ratio
            score = (outer[cand] * penalty[opp[cand]] - inner[cand]) / np.maximum(outer[cand], inner[cand])
            chosen.append(int(cand[int(np.argmin(score))]))
        out.extend(int(idx[i]) for i in chosen)
    return out


# --------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    from scipy.cluster.vq import kmeans2

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 16))
    x = centers[rng.integers(0, 6, 300)] + 0.6 * rng.normal(size=(300, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    _, km = kmeans2(x, 6, seed=1, minit="++")
    delta, pur = purity_delta(x, km, np.linspace(0.05, 1.0, 20), return_purities=True)
    print("purity delta:", delta, np.round(pur, 3))
    print("probcover:", probcover(x, 8, delta or 0.5))
    print("probcover labeled:", probcover(x, 5, delta or 0.5, labeled=[3, 7]))
    print("probcover official graph (n<500 -> empty, argmax 0):", probcover(x, 3, 0.5, graph_batch_size=500))
    _, km30 = kmeans2(x, 30, seed=1, minit="++")
    print("typiclust:", typiclust(x, 12, km30))
    print("typiclust labeled:", typiclust(x, 5, km30, labeled=[0, 1]))
    print("maxherding:", maxherding(x, 8, 1.0))
    print("maxherding labeled:", maxherding(x, 5, 1.0, labeled=[3, 7]))
    core = sorted(rng.choice(300, 6, replace=False).tolist())
    sel = bilaf(x, core, 30)
    print("bilaf:", len(sel), len(set(sel)), sel)
    print("bilaf (knn bug fixed):", bilaf(x, core, 30, official_knn_bug=False))
