"""BiLAF (Lu, Xie, Yang & Yan, NeurIPS 2024, arXiv 2403.10069): boundary samples on top of a core
selection, following the official code.

Official code: github.com/Thinklab-SJTU/BiLAF, ``data_selection/Boundary_Selection/density_cluster.py``.
A core selector (ActiveFT by default, as the paper) picks ``cores`` of the budget; every row joins
its nearest core (a pseudo-class). Each pseudo-class of at least 10 rows is denoised: grown in
rings of ``ring`` of its size outward from the core (each ring: the rows with the smallest mean
distance to ``density_neighbours`` rows of the grown set), and the last-grown ``remove`` dropped.
The budget is shared over pseudo-classes in proportion to their denoised sizes (``distribute_budget``:
floors, then +1 to the smallest share), each share counting its core. Within a class, starting
from the core, repeatedly: drop the ``n / share`` candidates nearest the last pick; if the last
pick was not the core, multiply the penalty of its nearest other core by ``penalty``; take the
candidate of lowest ``(outer * penalty[opponent] - inner) / max(outer, inner)`` (inner: mean
distance to its class; outer: distance to the nearest other core). Output: class by class, the
core, then its boundary picks.

``denoise="official"`` reproduces the official ring step, which takes the *positions* of the
nearest grown rows as row indices of the class (``np.mean(cur_dist_matrix[i][nearest_distance])``);
``"nearest"`` uses the distances to the nearest grown rows, as the paper describes. Distances are
Euclidean on the pool's unit vectors (the official boundary stage reads the raw DINO features).
Ties: stable sorts, to the smaller row. Labeled rows join no class (the official code has none), and
no row is picked twice (the official code can repeat a row when a class has fewer rows than its
share; here such a class's missing picks are made farthest-first from all picks, with a warning).
Every rank computes every class on the gathered rows of that class: O(N^2 D / cores) time,
O(max class size^2) memory.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..engine import FlatIndex, generator, k_center_greedy
from ..errors import ParameterError
from ..params import Param, Rule, integer, number, one_of
from .registry import Result, Selector, get_selector, list_selectors, register_selector

log = logging.getLogger(__name__)


def distribute_budget(budget: int, sizes) -> np.ndarray:
    """The official ``distribute_budget``: floor of each proportional share, then +1 at a time to the
    smallest share (ties: the larger class, then the first)."""
    p = np.asarray(sizes, dtype=np.float64) / np.sum(sizes)
    share = np.floor(p * budget).astype(int)
    for _ in range(budget - share.sum()):
        share[np.lexsort((np.arange(len(share)), -p, share))[0]] += 1
    return share


def denoise(d: torch.Tensor, core: int, ring: float, remove: float, k: int, official: bool) -> torch.Tensor:
    """Positions of the class kept after the ring growth, in grown order (``d``: the class's distances)."""
    n = len(d)
    m = max(1, int(n * ring))
    grown = torch.sort(d[core], stable=True).indices[:m]
    free = torch.ones(n, dtype=torch.bool)
    free[grown] = False
    for _ in range(2, n // m + 1):
        cand = free.nonzero().squeeze(1)
        if not len(cand):
            break
        sub = d[cand][:, grown]
        pos = torch.sort(sub, dim=1, stable=True).indices[:, :k]
        score = (d[cand[:, None], pos] if official else sub.gather(1, pos)).mean(1)
        new = cand[torch.sort(score, stable=True).indices[:m]]
        free[new] = False
        grown = torch.cat([grown, new])
    return grown[:int(len(grown) * (1 - remove))]


@register_selector
class BiLAF(Selector):
    """BiLAF: a core selection, then boundary samples of each core's pseudo-class."""

    name = "bilaf"
    params = {
        "core": Param("activeft", Rule(str, lambda v: v in list_selectors() and v != "bilaf",
                                       "a selection method other than bilaf"),
                      "The core selector (run with its defaults)."),
        "cores": Param(0.2, number(0, strict=True, maximum=1), "Share of the budget picked by the core selector."),
        "density_neighbours": Param(10, integer(1), "Grown rows in the ring step's mean distance (official 10)."),
        "ring": Param(0.1, number(0, strict=True, maximum=1), "Share of a class grown per ring (official 0.1)."),
        "remove": Param(0.1, number(0, maximum=1), "Share of a class dropped as noise (official 0.1; its "
                                                   "ImageNet script 0.2)."),
        "penalty": Param(1.1, number(1), "Factor on an opponent core's weight each time a pick faces it "
                                         "(official 1.1)."),
        "denoise": Param("official", one_of("official", "nearest"), "Ring step as the official code indexes it, "
                                                                    "or by the nearest grown rows."),
    }
    test_params = {"core": "kmeans"}  # the cheapest core selector

    def fit(self, pool, comm, budget, exclude, checkpoints) -> Result:
        n_core = max(1, round(self.cores * budget))
        core = self._core(pool, comm, n_core, exclude, checkpoints)
        core_x = pool.gather_rows(core, comm)
        nearest = FlatIndex(core_x, "l2", precision=pool.precision).search(pool.x, scores=False)[0]
        every = pool.whole(nearest, comm).cpu()
        every[exclude] = -1  # labeled rows take no part (the official code has none)
        classes, kept = [], []
        for c in range(n_core):
            members = (every == c).nonzero().squeeze(1)
            d = torch.cdist(*[pool.gather_rows(members, comm).double().cpu()] * 2)
            at = (members == core[c]).nonzero().squeeze(1)
            if not len(at):
                raise ParameterError(f"bilaf: core row {int(core[c])} has a duplicate nearer another core; "
                                     "deduplicate the pool")
            keep = (denoise(d, int(at[0]), self.ring, self.remove, self.density_neighbours,
                            self.denoise == "official") if len(members) >= 10 else torch.arange(len(members)))
            classes.append((members, d, int(at[0])))
            kept.append(keep)
        share = distribute_budget(budget, [len(k) for k in kept])
        if (share == 0).any():
            raise ParameterError(f"bilaf: budget {budget} leaves a pseudo-class without its core; raise cores")
        core_x = core_x.double().cpu()
        rows, is_core = [], []
        for c, ((members, d, at), keep) in enumerate(zip(classes, kept, strict=True)):
            if at not in keep.tolist():
                raise ParameterError(f"bilaf: denoising dropped core row {int(core[c])}; lower remove")
            x = d[keep][:, keep]
            rows_c = members[keep]
            inner = x.mean(1)
            outer_all = torch.cdist(pool.gather_rows(rows_c, comm).double().cpu(), core_x)
            outer_all[:, c] = 1e9 + 7
            outer, opponent = outer_all.min(1)
            penalty = torch.ones(n_core, dtype=torch.float64)
            chosen = [keep.tolist().index(at)]
            r = len(keep) // int(share[c])
            cand = torch.arange(len(keep))
            while len(chosen) < share[c]:
                node = chosen[-1]
                cand = cand[torch.sort(x[node][cand], stable=True).indices][r:]
                if node != chosen[0]:
                    penalty[opponent[node]] *= self.penalty
                score = (outer[cand] * penalty[opponent[cand]] - inner[cand]) / torch.maximum(outer[cand], inner[cand])
                score[torch.isin(cand, torch.tensor(chosen))] = torch.inf
                if not len(cand) or torch.isinf(score).all():
                    break  # the class has no row left to pick
                chosen.append(int(cand[torch.argmin(score)]))
            rows += rows_c[chosen].tolist()
            is_core += [True] + [False] * (len(chosen) - 1)
        if len(rows) < budget:  # distribute_budget gave some class a larger share than its rows
            log.warning("bilaf: its pseudo-classes hold %d of the %d rows to pick; the other %d are picked "
                        "farthest-first", len(rows), budget, budget - len(rows))
            rest = k_center_greedy(pool, comm, budget - len(rows), generator(self.seed), [*exclude.tolist(), *rows],
                                   tag="bilaf (farthest-first)")
            rows += rest.tolist()
            is_core += [False] * len(rest)
        return Result(np.asarray(rows), {"core": np.asarray(is_core)}, {"cores": n_core, "core_method": self.core})

    def _core(self, pool, comm, n_core, exclude, checkpoints) -> torch.Tensor:
        """The core selector's rows, sorted (the official ActiveFT script writes them sorted)."""
        rows = get_selector(self.core)(seed=self.seed).fit(pool, comm, n_core, exclude, checkpoints).rows
        return torch.as_tensor(np.sort(rows), dtype=torch.long)
