"""Label propagation: every pool row gets a label and a confidence by label spreading over the pool's
nearest-neighbour graph (Zhou et al., NIPS 2004; scikit-learn's ``LabelSpreading(kernel="knn")``;
:func:`activeft.engine.propagate.spread_labels`), then the confident rows join the training set.

A row's ``confidence`` is its normalised class score (the largest of its scores over their sum, as
scikit-learn's ``label_distributions_``); rows the spreading never reached have no label and are
left out. ``min_confidence`` drops the less confident pseudo-labels, and ``class_cap`` keeps at most
``class_cap x pool / classes`` of each class (its most confident), so that no class floods the set.

Defaults: the graph, iterations and tolerance are scikit-learn's; ``alpha`` is the paper's 0.99, not
scikit-learn's 0.2: on a validation split of the Fashion-MNIST pool (PCA-64, k-means picks, B = 20 and
60, two seeds) 0.9 and 0.99 led 0.5 and 0.2 by 1 to 3 points (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..engine.propagate import spread_labels
from ..params import Param, integer, number, optional
from ..runtime.runner import run
from .methods import Calibrator, Pseudo, register_calibrator


@register_calibrator
class LabelPropagation(Calibrator):
    """Label spreading on the ``neighbours``-nearest-neighbour graph of the whole pool."""

    name = "labelprop"
    history = True  # every labeled row counts, also those of earlier rounds
    params = {
        "neighbours": Param(10, integer(1), "Nearest rows per row in the graph (scikit-learn's n_neighbors)."),
        "alpha": Param(0.99, number(0, strict=True, maximum=0.9999), "Share of a row's score taken from its "
                                                                      "neighbours each iteration (1 - alpha stays "
                                                                      "with its label); Zhou et al.'s 0.99, "
                                                                      "scikit-learn's default is 0.2."),
        "iterations": Param(30, integer(1), "Most spreading iterations (scikit-learn's max_iter)."),
        "tol": Param(1e-3, number(0), "Stop once the L1 change of the scores is below this (scikit-learn's tol)."),
        "min_confidence": Param(0.0, number(0, maximum=1), "Pseudo-labels less confident than this are left out."),
        "class_cap": Param(None, optional(number(0, strict=True)), "At most class_cap x pool / classes "
                                                                  "pseudo-labels per class, the most confident "
                                                                  "(None: no cap)."),
        "candidates": Param(1 << 16, integer(1), "Rows each row is compared with when building the graph; pools "
                                                 "up to this size are searched exactly."),
    }

    def fit(self, store, rows, klass, classes, *, num_workers, use_gpu) -> Pseudo:
        n_classes = len(classes)
        job = functools.partial(_job, rows.tolist(), klass.tolist(), n_classes, self.config())
        result = run(job, store, num_workers=num_workers, use_gpu=use_gpu)
        label, confidence = np.asarray(result["label"]), np.asarray(result["confidence"])
        keep = (label >= 0) & (confidence >= self.min_confidence)
        keep[rows] = False
        if self.class_cap is not None:
            cap = int(self.class_cap * len(store) / n_classes)
            for c in range(n_classes):
                members = np.flatnonzero(keep & (label == c))
                order = np.lexsort((members, -confidence[members]))  # most confident first, ties to the lower row
                keep[members[order[cap:]]] = False
        chosen = np.flatnonzero(keep)
        info = {"iterations": result["iterations"], "change": result["change"], "edges": result["edges"],
                "unreached": int((label < 0).sum()),
                "below_min_confidence": int(((label >= 0) & (confidence < self.min_confidence)).sum())}
        return Pseudo(chosen, label[chosen], {"confidence": confidence[chosen]}, {"confidence": 1.0}, info)


def _job(rows, klass, n_classes, params, pool, comm, checkpoints) -> dict:
    """Every rank: the spreading; rank 0's class scores become a label (-1: unreached) and a confidence per row."""
    f, info = spread_labels(pool, comm, torch.tensor(rows), torch.tensor(klass), n_classes, k=params["neighbours"],
                            alpha=params["alpha"], iterations=params["iterations"], tol=params["tol"],
                            candidates=params["candidates"], seed=params["seed"])
    total = f.sum(1)
    best, label = f.max(1)
    reached = total > 0
    confidence = torch.where(reached, best / total.clamp_min(1e-300), 0.0)
    return {"label": torch.where(reached, label, -1).tolist(), "confidence": confidence.tolist(), **info}
