"""The selection report: one self-contained ``report.html`` (PNG plots inline) in the selection directory.

Plots: the loss (ActiveFT) or inertia (k-means) curve; a 2-D PCA projection of a pool sample with
the selected points; the coverage (mean cosine similarity of pool samples to their nearest
selected sample) against a random selection of the same size; the share of the pool sample and
of the selection in each of ``clusters`` k-means clusters of the sample; and, when the store has
labels, the class balance of the selection against the pool's.
"""

from __future__ import annotations

import base64
import html
import io
import logging

import numpy as np
import torch

from . import storage
from .engine import Collectives, FlatIndex, Pool, kmeans
from .select import Selection, read_selection
from .store import EmbeddingStore

log = logging.getLogger(__name__)
REPORT = "report.html"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figure(title: str, size=(6.4, 4)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.set_title(title)
    return fig, ax


def write_report(store, selection, *, sample: int = 5000, clusters: int = 20, seed: int = 0) -> str:
    """Write ``report.html`` into the selection directory; return its URI.

    Examples
    --------
    >>> import activeft, numpy as np, tempfile
    >>> from activeft.report import write_report
    >>> d = tempfile.mkdtemp()
    >>> np.save(f"{d}/x.npy", np.random.default_rng(0).normal(size=(300, 8)).astype("float32"))
    >>> _ = open(f"{d}/ids.txt", "w").write("\\n".join(f"i{j}" for j in range(300)))
    >>> store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
    >>> _ = activeft.select(store, 12, method="kmeans", iterations=5, output=f"{d}/sel")
    >>> write_report(store, f"{d}/sel", clusters=5).endswith("sel/report.html")
    True
    """
    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    sel = selection if isinstance(selection, Selection) else read_selection(selection)
    rng = np.random.default_rng(seed)
    n = len(store)
    pool_rows = np.sort(rng.choice(n, min(sample, n), replace=False))
    sel_rows = store.rows_of(sel.ids, "selected ids")
    both = store.embeddings_at(np.concatenate([pool_rows, sel_rows]))  # one read of the shards
    pool, chosen = both[:len(pool_rows)], both[len(pool_rows):]
    sections = [_summary(sel, n)]
    sections += [_loss_curve(sel.info), _projection(pool, chosen), _coverage(sel.info)]
    sections.append(_cluster_coverage(pool, chosen, clusters, seed))
    if store.has_labels:
        sections.append(_class_balance(store, sel_rows))
    body = "\n".join(s for s in sections if s)
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>activeft selection report</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
            "table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}"
            "img{max-width:100%}</style></head><body><h1>Selection report</h1>\n" + body + "</body></html>\n")
    uri = storage.join(sel.uri, REPORT)
    storage.write_bytes(uri, page.encode())
    log.info("report: %s", uri)
    return uri


def _section(title: str, png: str, note: str = "") -> str:
    return (f"<h2>{html.escape(title)}</h2>" + (f"<p>{html.escape(note)}</p>" if note else "") +
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")


def _summary(sel: Selection, n: int) -> str:
    cfg, info = sel.info.get("config", {}), sel.info
    rows = [("method", cfg.get("method")), ("budget", f"{info['budget']} of {n} ({100 * info['budget'] / n:.3g}%)"),
            ("excluded (already labeled)", info.get("excluded", 0)), ("workers", cfg.get("num_workers")),
            ("seed", cfg.get("seed")), ("selection seconds", info.get("seconds_select")),
            ("store", info.get("store", {}).get("uri")), ("created", info.get("created"))]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _loss_curve(info: dict) -> str:
    name, values = next(((k, info[k]) for k in ("loss_history", "inertia_history") if info.get(k)), (None, None))
    if not values:
        return ""
    fig, ax = _figure("ActiveFT loss" if name == "loss_history" else "k-means inertia")
    ax.plot(np.arange(1, len(values) + 1), values)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss" if name == "loss_history" else "inertia")
    return _section("Optimisation curve", _png(fig))


def _projection(pool: np.ndarray, chosen: np.ndarray) -> str:
    mean = pool.mean(0)
    _, _, vt = np.linalg.svd(pool - mean, full_matrices=False)
    p, c = (pool - mean) @ vt[:2].T, (chosen - mean) @ vt[:2].T
    fig, ax = _figure("Pool sample and selection, first two principal components", (6.4, 5))
    ax.scatter(p[:, 0], p[:, 1], s=3, c="#bbbbbb", label=f"pool sample ({len(p)})")
    ax.scatter(c[:, 0], c[:, 1], s=14, c="#d62728", label=f"selected ({len(c)})")
    ax.legend(loc="best")
    return _section("2-D projection (PCA)", _png(fig))


def _coverage(info: dict) -> str:
    if "coverage" not in info:
        return ""
    fig, ax = _figure("Coverage: mean cosine similarity to the nearest selected sample", (6.4, 3))
    values = [info["coverage"], info["coverage_random"]]
    bars = ax.barh(["selection", "random, same size"], values, color=["#d62728", "#7f7f7f"])
    ax.bar_label(bars, fmt="%.4f")
    ax.set_xlim(min(values) - 0.05 * abs(min(values)), max(values) * 1.02)
    return _section("Coverage against random", _png(fig),
                    "Higher is better: every pool sample has a selected sample close to it.")


def _cluster_coverage(pool: np.ndarray, chosen: np.ndarray, clusters: int, seed: int) -> str:
    k = min(clusters, len(pool))
    x = torch.from_numpy(pool)
    centroids, _ = kmeans(Pool(x, 0, len(x)), Collectives(), k, iterations=30, seed=seed, tag="report kmeans")
    index = FlatIndex(centroids, "l2")
    pool_share = np.bincount(index.search(x, scores=False)[0].numpy(), minlength=k) / len(pool)
    sel_share = np.bincount(index.search(torch.from_numpy(chosen), scores=False)[0].numpy(), minlength=k) / len(chosen)
    order = np.argsort(-pool_share)
    fig, ax = _figure(f"Share of each of {k} clusters of the pool sample", (7.5, 4))
    pos = np.arange(k)
    ax.bar(pos - 0.2, pool_share[order], 0.4, label="pool sample", color="#7f7f7f")
    ax.bar(pos + 0.2, sel_share[order], 0.4, label="selection", color="#d62728")
    ax.set_xlabel("cluster (largest first)")
    ax.set_ylabel("share")
    ax.legend()
    empty = int((sel_share == 0).sum())
    return _section("Cluster coverage", _png(fig), f"{empty} of {k} clusters have no selected sample.")


def _class_balance(store: EmbeddingStore, sel_rows) -> str:
    labels = np.array([str(v) for v in store.read(columns=["label"]).column("label").to_pylist()])
    classes, pool_counts = np.unique(labels, return_counts=True)
    sel_counts = np.array([(labels[sel_rows] == c).sum() for c in classes])
    fig, ax = _figure("Class balance (the store's labels; selection never reads them)", (7.5, 4))
    pos = np.arange(len(classes))
    ax.bar(pos - 0.2, pool_counts / pool_counts.sum(), 0.4, label="pool", color="#7f7f7f")
    ax.bar(pos + 0.2, sel_counts / max(sel_counts.sum(), 1), 0.4, label="selection", color="#d62728")
    ax.set_xticks(pos, classes, rotation=45 if len(classes) > 8 else 0)
    ax.set_ylabel("share")
    ax.legend()
    return _section("Class balance", _png(fig), f"{int((sel_counts == 0).sum())} of {len(classes)} classes have no "
                                                "selected sample.")
