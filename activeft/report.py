"""The selection report: one self-contained ``report.html`` (PNG plots inline) in the selection directory.

Sections: a gallery of the selected images (inline thumbnails read from wherever the images live,
local or object storage); a 2-D PCA projection of a pool sample with the selected points (inline
SVG: hovering a selected point shows its image); the loss (ActiveFT), inertia (k-means) or gain
per pick (MaxHerding, ProbCover) curve; the coverage (mean cosine similarity of pool samples to
their nearest selected sample) against a random selection of the same size; the share of the pool
sample and of the selection in each of ``clusters`` k-means clusters of the sample, and each
cluster's most central images with the ones selected from it; and, when the store has labels, the
class balance of the selection against the pool's. A store of imported embeddings (no image uris) gets no images.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import logging

import numpy as np
import pyarrow.compute as pc
import torch

from .engine import Collectives, FlatIndex, Pool, kmeans
from .io import storage
from .io.store import EmbeddingStore, open_store
from .params import STORE, Rule, integer
from .select import Selection, read_selection
from .stages import Section, stage

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


@stage({"store": STORE, "selection": Rule(str, lambda v: isinstance(v, (str, Selection)), "a selection"),
        "sample": integer(10), "clusters": integer(2), "seed": integer()}, name="report",
       section=Section("report", fixed=("store", "selection", "seed"), extra={"enabled": (bool, True)}, always=True))
def write_report(store, selection, *, sample: int = 5000, clusters: int = 20, seed: int = 0) -> str:
    """Write ``report.html`` into the selection directory; return its URI.

    Parameters
    ----------
    store : str or EmbeddingStore
        The embedding store the selection was made from.
    selection : str or Selection
        The selection (its directory or the object).
    sample : int, default=5000
        Pool rows drawn for the plots.
    clusters : int, default=20
        k-means clusters of the pool shown in the report.
    seed : int, default=0
        Random seed of the sample and the clustering.

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
    store = open_store(store)
    sel = selection if isinstance(selection, Selection) else read_selection(selection)
    rng = np.random.default_rng(seed)
    n = len(store)
    pool_rows = np.sort(rng.choice(n, min(sample, n), replace=False))
    sel_rows = store.rows_of(sel.ids, "selected ids")
    both = store.embeddings_at(np.concatenate([pool_rows, sel_rows]))  # one read of the shards
    pool, chosen = both[:len(pool_rows)], both[len(pool_rows):]
    assign, sel_assign, centroids = _clusters(pool, chosen, clusters, seed)
    examples = _cluster_examples(pool, assign, centroids)
    thumbs = _Thumbnails(store, np.concatenate([sel_rows[:GALLERY], pool_rows[np.concatenate(examples)]]))
    sections = [_summary(sel, n), _gallery(sel, sel_rows, thumbs), _projection(pool, chosen, sel, sel_rows, thumbs),
                _loss_curve(sel), _coverage(sel.info),
                _cluster_coverage(assign, sel_assign, len(centroids)),
                _cluster_gallery(examples, pool_rows, assign, sel_assign, sel_rows, sel, thumbs)]
    if store.has_labels:
        sections.append(_class_balance(store, sel_rows))
    body = "\n".join(s for s in sections if s)
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>activeft selection report</title>"
            f"<style>{_CSS}</style></head><body><h1>Selection report</h1>\n" + body + _HOVER + "</body></html>\n")
    uri = storage.join(sel.uri, REPORT)
    storage.write_bytes(uri, page.encode())
    log.info("report: %s (%d thumbnails, %d unreadable)", uri, thumbs.made, thumbs.failed)
    return uri


GALLERY = 120  # selected images shown (and hoverable in the projection), in rank order
EXAMPLES = 8  # pool images shown per cluster, nearest to its centroid first
THUMB = 96  # thumbnail side in pixels
_CSS = ("body{font-family:sans-serif;max-width:64em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}"
        "img{max-width:100%}.grid{display:flex;flex-wrap:wrap;gap:6px}"
        ".grid figure{margin:0;width:" + str(THUMB) + "px;font-size:10px;overflow:hidden;text-overflow:ellipsis;"
        "white-space:nowrap}.grid img{width:" + str(THUMB) + "px;height:" + str(THUMB) + "px;object-fit:contain;"
        "background:#f4f4f4}.cluster{margin:.8em 0}.cluster h3{font-size:1em;margin:.2em 0}"
        "#tip{position:fixed;display:none;pointer-events:none;background:#fff;border:1px solid #999;padding:3px;"
        "font-size:10px}svg circle.sel{cursor:pointer}")
_HOVER = ("<div id='tip'><img width='" + str(THUMB) + "'><div></div></div><script>"
          "const tip=document.getElementById('tip');"
          "document.querySelectorAll('svg circle.sel').forEach(c=>{"
          "c.addEventListener('mouseenter',e=>{const t=document.getElementById('t'+c.dataset.r);"
          "tip.querySelector('img').src=t?t.src:'';tip.querySelector('div').textContent=c.dataset.id;"
          "tip.style.display='block';tip.style.left=(e.clientX+12)+'px';tip.style.top=(e.clientY+12)+'px';});"
          "c.addEventListener('mouseleave',()=>{tip.style.display='none';});});</script>")


class _Thumbnails:
    """Inline JPEG thumbnails (data URIs) of store rows, read once from wherever the images live
    (local or object storage); a store without image uris, or an unreadable image, has none."""

    def __init__(self, store: EmbeddingStore, rows: np.ndarray):
        from .models.images import open_images

        self.uri_of, self.made, self.failed = {}, 0, 0
        if "uri" not in store.columns or not len(rows):
            return
        rows = np.unique(rows)
        uris = store.take(rows, ["uri"]).column("uri").to_pylist()
        first = next(open_images(uris[:1]))
        if isinstance(first, Exception):  # one probe: unreachable images cost one timeout, not one each
            log.warning("report: no thumbnails: cannot read %s: %s", uris[0], first)
            self.failed = len(uris)
            return
        images = itertools.chain([first], open_images(uris[1:]))
        for row, image in zip(rows.tolist(), images, strict=True):
            if isinstance(image, Exception):
                self.failed += 1
                continue
            image.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=85)
            self.uri_of[row] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
            self.made += 1

    def figure(self, row: int, caption: str, anchor: str = "") -> str:
        src = self.uri_of.get(int(row))
        img = (f"<img{anchor} alt='{html.escape(caption)}' src='{src}'>" if src else
               "<div style='height:96px;background:#eee'>no image</div>")
        return f"<figure title='{html.escape(caption)}'>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _section(title: str, png: str, note: str = "") -> str:
    return (f"<h2>{html.escape(title)}</h2>" + (f"<p>{html.escape(note)}</p>" if note else "") +
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")


def _summary(sel: Selection, n: int) -> str:
    cfg, info = sel.info.get("config", {}), sel.info
    rows = [("method", cfg.get("method")), ("budget", f"{info['budget']} of {n} ({100 * info['budget'] / n:.3g}%)"),
            ("excluded (already labeled)", info.get("excluded", 0)),
            *([(f"near-duplicates left out (dedup {cfg.get('dedup')})", info["dedup"]["dropped"])] if "dedup" in info
              else []),
            *([(f"outliers left out (drop_outliers {cfg.get('drop_outliers')})", info["outliers"]["dropped"])]
              if "outliers" in info else []),
            ("workers", cfg.get("num_workers")),
            ("seed", cfg.get("seed")), ("selection seconds", info.get("seconds_select")),
            ("store", info.get("store", {}).get("uri")), ("created", info.get("created"))]
    quotas = info.get("balance")
    return _facts(rows) + ("" if not quotas else
                           f"<h2>Quotas by {html.escape(quotas['by'])} ({html.escape(str(quotas['rule']))})</h2>"
                           + _rows_html(quotas["groups"]))


def _facts(rows) -> str:
    """``(name, value)`` pairs as a two-column table."""
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in rows) + "</table>"


def _rows_html(records: list[dict]) -> str:
    """Records with the same keys as a table, a header of their keys."""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in records[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in records)
    return f"<table><tr>{head}</tr>{body}</table>"


CURVES = {  # what a selection records of its optimisation: (where, key) -> (title, x label, y label)
    ("info", "loss_history"): ("ActiveFT loss", "iteration", "loss"),
    ("info", "inertia_history"): ("k-means inertia", "iteration", "inertia"),
    ("column", "gain"): ("MaxHerding: kernel coverage gained by each pick", "pick", "gain"),
    ("column", "degree"): ("ProbCover: rows newly covered by each pick", "pick", "rows"),
}


def _loss_curve(sel: Selection) -> str:
    found = ((labels, sel.info.get(key) if where == "info" else
              sel.table.column(key).to_pylist() if key in sel.table.column_names else None)
             for (where, key), labels in CURVES.items())
    (title, x_label, y_label), values = next(((labels, v) for labels, v in found if v), ((None,) * 3, None))
    if not values:
        return ""
    fig, ax = _figure(title)
    ax.plot(np.arange(1, len(values) + 1), values)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    return _section("Optimisation curve", _png(fig))


def _gallery(sel: Selection, sel_rows: np.ndarray, thumbs: _Thumbnails) -> str:
    if not thumbs.uri_of:
        return "<h2>Selected images</h2><p>No thumbnails: the store holds no readable image uris.</p>"
    shown = min(len(sel_rows), GALLERY)
    figures = "".join(thumbs.figure(r, f"{k}. {i}", f" id='t{r}'")
                      for k, (r, i) in enumerate(zip(sel_rows[:shown].tolist(), sel.ids[:shown], strict=True)))
    note = f"The first {shown} of {len(sel_rows)} selected images, in selection order." if shown < len(sel_rows) \
        else f"All {shown} selected images, in selection order."
    return f"<h2>Selected images</h2><p>{note}</p><div class='grid'>{figures}</div>"


def _projection(pool: np.ndarray, chosen: np.ndarray, sel: Selection, sel_rows: np.ndarray,
                 thumbs: _Thumbnails) -> str:
    """The pool sample and the selection on the first two principal components, as inline SVG:
    hovering a selected point shows its thumbnail."""
    mean = pool.mean(0)
    _, _, vt = np.linalg.svd(pool - mean, full_matrices=False)
    p, c = (pool - mean) @ vt[:2].T, (chosen - mean) @ vt[:2].T
    both = np.concatenate([p, c])
    lo, span = both.min(0), np.maximum(np.ptp(both, 0), 1e-12)
    w, h, pad = 720, 480, 10

    def xy(v):
        return pad + (v[:, 0] - lo[0]) / span[0] * (w - 2 * pad), h - pad - (v[:, 1] - lo[1]) / span[1] * (h - 2 * pad)

    px, py = xy(p)
    cx, cy = xy(c)
    dots = "".join(f"<circle cx='{a:.1f}' cy='{b:.1f}' r='1.6' fill='#bbb'/>" for a, b in zip(px, py, strict=True))
    dots += "".join(f"<circle class='sel' data-r='{r}' data-id='{html.escape(i)}' cx='{a:.1f}' cy='{b:.1f}' r='4' "
                    f"fill='#d62728'/>" for a, b, r, i in zip(cx, cy, sel_rows.tolist(), sel.ids, strict=True))
    note = (f"{len(p)} pool samples (grey) and the {len(c)} selected (red), first two principal components."
            + (" Hover a red point for its image." if thumbs.uri_of else ""))
    return (f"<h2>2-D projection (PCA)</h2><p>{note}</p><svg width='{w}' height='{h}' viewBox='0 0 {w} {h}' "
            f"style='border:1px solid #ddd'>{dots}</svg>")


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


def _clusters(pool: np.ndarray, chosen: np.ndarray, clusters: int, seed: int):
    """k-means of the pool sample: ``(pool cluster, selection cluster, centroids)``."""
    k = min(clusters, len(pool))
    x = torch.from_numpy(pool)
    centroids, _ = kmeans(Pool(x, 0, len(x)), Collectives(), k, iterations=30, seed=seed, tag="report kmeans")
    index = FlatIndex(centroids, "l2")
    return (index.search(x, scores=False)[0].numpy(), index.search(torch.from_numpy(chosen), scores=False)[0].numpy(),
            centroids.numpy())


def _cluster_examples(pool: np.ndarray, assign: np.ndarray, centroids: np.ndarray) -> list[np.ndarray]:
    """Per cluster, the indices (into the pool sample) of its :data:`EXAMPLES` samples nearest its centroid."""
    out = []
    for j, c in enumerate(centroids):
        members = np.flatnonzero(assign == j)
        out.append(members[np.argsort(((pool[members] - c) ** 2).sum(1), kind="stable")[:EXAMPLES]])
    return out


def _cluster_coverage(assign: np.ndarray, sel_assign: np.ndarray, k: int) -> str:
    pool_share = np.bincount(assign, minlength=k) / len(assign)
    sel_share = np.bincount(sel_assign, minlength=k) / len(sel_assign)
    order = np.argsort(-pool_share, kind="stable")
    fig, ax = _figure(f"Share of each of {k} clusters of the pool sample", (7.5, 4))
    pos = np.arange(k)
    ax.bar(pos - 0.2, pool_share[order], 0.4, label="pool sample", color="#7f7f7f")
    ax.bar(pos + 0.2, sel_share[order], 0.4, label="selection", color="#d62728")
    ax.set_xlabel("cluster (largest first)")
    ax.set_ylabel("share")
    ax.legend()
    empty = int((sel_share == 0).sum())
    return _section("Cluster coverage", _png(fig), f"{empty} of {k} clusters have no selected sample.")


def _cluster_gallery(examples, pool_rows, assign, sel_assign, sel_rows, sel: Selection, thumbs: _Thumbnails) -> str:
    """Each cluster of the pool sample, largest first: its most central images and its selected ones."""
    if not thumbs.uri_of:
        return ""
    sizes = np.bincount(assign, minlength=len(examples))
    parts = []
    for j in np.argsort(-sizes, kind="stable"):
        chosen = np.flatnonzero(sel_assign == j)
        pool_figs = "".join(thumbs.figure(pool_rows[i], "pool sample") for i in examples[j])
        sel_figs = "".join(thumbs.figure(sel_rows[i], f"{i}. {sel.ids[i]}") for i in chosen if i < GALLERY)
        parts.append(f"<div class='cluster'><h3>Cluster {j}: {sizes[j]} of {len(assign)} pool samples, "
                     f"{len(chosen)} selected</h3><div class='grid'>{pool_figs}</div>"
                     + (f"<p>selected:</p><div class='grid'>{sel_figs}</div>" if sel_figs else "") + "</div>")
    return "<h2>Clusters with examples</h2><p>The images nearest each cluster's centre, then those selected.</p>" \
        + "".join(parts)


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


def calibration_page(info: dict, table) -> str:
    """The calibration report (``report.html`` beside ``calibration.json``): the labeled and the pseudo-labeled
    rows of each class, the confidence of the pseudo-labels where the method gives one, and, when the store
    has labels (a diagnostic only), their accuracy by confidence against the diagonal of perfect calibration."""
    classes = [str(c) for c in info["classes"]]
    counts = np.array([[info["per_class"][c]["labeled"], info["per_class"][c]["pseudo"]] for c in classes])
    fig, ax = _figure("Rows per class", (7.5, 4))
    pos = np.arange(len(classes))
    ax.bar(pos, counts[:, 1], color="#1f77b4", label="pseudo-labeled")
    ax.bar(pos, counts[:, 0], bottom=counts[:, 1], color="#d62728", label="labeled")
    ax.set_xticks(pos, classes, rotation=45 if len(classes) > 8 else 0)
    ax.legend()
    acc = info.get("pseudo_label_accuracy")
    rows = [("method", info["method"]), ("parameters", info["params"]), ("labeled", info["labeled"]),
            ("pseudo-labeled", info["pseudo"]), ("seconds", info["seconds"]),
            *([("pseudo-label accuracy (the store's labels; a diagnostic)", f"{acc:.3f}")] if acc is not None else [])]
    sections = [_facts(rows),
                _section("Class balance", _png(fig), f"{int((counts.sum(1) == 0).sum())} of {len(classes)} classes "
                                                     "have no row.")]
    if "confidence" in table.column_names:
        source = np.array(table.column("source").to_pylist())
        confidence = table.column("confidence").to_numpy()[source == "pseudo"]
        fig, ax = _figure("Confidence of the pseudo-labels")
        ax.hist(confidence, bins=20, range=(0, 1), color="#1f77b4")
        ax.set_xlabel("confidence")
        ax.set_ylabel("rows")
        sections.append(_section("Confidence", _png(fig), "Rows below the minimum confidence were left out."))
    bins = [b for b in info.get("reliability") or [] if b["accuracy"] is not None]
    if bins:
        fig, ax = _figure("Reliability: accuracy of the pseudo-labels by confidence")
        mid = [sum(b["confidence"]) / 2 for b in bins]
        ax.plot([0, 1], [0, 1], "--", color="#7f7f7f", label="perfect calibration")
        ax.plot(mid, [b["accuracy"] for b in bins], "o-", color="#d62728", label="pseudo-labels")
        for x, b in zip(mid, bins, strict=True):
            ax.annotate(str(b["rows"]), (x, b["accuracy"]), fontsize=7, textcoords="offset points", xytext=(0, 5))
        ax.set_xlabel("confidence (bin centre; rows per bin marked)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.legend()
        sections.append(_section("Reliability", _png(fig), "From the store's own labels, which calibration never "
                                                           "reads: a diagnostic."))
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>activeft calibration report</title>"
            f"<style>{_CSS}</style></head><body><h1>Calibration report</h1>\n" + "\n".join(sections)
            + "</body></html>\n")


SHOWN = 24  # thumbnails in each gallery of the scores page
GROUPS = 6  # near-duplicate groups shown, largest first


def scores_page(info: dict, table, store: EmbeddingStore) -> str:
    """The scores report (``report.html`` beside ``scores.json``): the histograms of uniqueness and density
    (the outliers' cut marked), and thumbnails of the most unique rows, the largest near-duplicate groups
    and the outliers."""
    ids = table.column("id").to_pylist()
    unique, density = table.column("uniqueness").to_numpy(), table.column("density").to_numpy()
    size, outlier = table.column("group_size").to_numpy(), table.column("outlier").to_numpy(zero_copy_only=False)
    kept_of = pc.index_in(table.column("duplicate_of"), value_set=table.column("id")).fill_null(-1).to_numpy()
    heads = [r for r in np.lexsort((np.arange(len(ids)), -size)) if size[r] > 1 and kept_of[r] < 0][:GROUPS]
    groups = [[h, *np.flatnonzero(kept_of == h)[:SHOWN - 1]] for h in heads]
    most_unique = np.lexsort((np.arange(len(ids)), -unique))[:SHOWN]
    lowest = np.flatnonzero(outlier)[np.argsort(density[outlier], kind="stable")][:SHOWN]
    thumbs = _Thumbnails(store, np.concatenate([most_unique, lowest, *map(np.asarray, groups)]).astype(np.int64))
    cfg = info["config"]
    rows = [("rows", info["rows"]), ("neighbours (k)", info["k"]),
            (f"near-duplicate groups (cosine >= {cfg['dedup']})",
             f"{info['groups']} groups of {info['rows_in_groups']} rows"),
            (f"outliers (lowest {cfg['outliers']:g} of density)", info["outliers"]), ("seconds", info["seconds"]),
            ("store", cfg["store"]), ("created", info.get("created"))]
    sections = [_facts(rows)]
    for name, values, note in (("Uniqueness", unique, f"Distance to the {info['k']}-th nearest row."),
                               ("Density", density, f"Mean cosine similarity to the {info['k']} nearest rows; the "
                                                    "outliers lie left of the dashed line.")):
        fig, ax = _figure(name)
        ax.hist(values, bins=50, color="#1f77b4")
        if name == "Density" and outlier.any():
            ax.axvline(density[outlier].max(), ls="--", color="#d62728")
        ax.set_xlabel(name.lower())
        ax.set_ylabel("rows")
        sections.append(_section(name, _png(fig), note))
    grid = lambda rows, caption: "<div class='grid'>" + "".join(thumbs.figure(r, caption(r)) for r in rows) \
        + "</div>"  # noqa: E731
    no_images = "" if thumbs.uri_of else "<p>No thumbnails: the store holds no readable image uris.</p>"
    sections += [f"<h2>Most unique</h2>{no_images}" + grid(most_unique, lambda r: f"{ids[r]} {unique[r]:.3f}"),
                 "<h2>Largest near-duplicate groups</h2>" + ("".join(
                     f"<div class='cluster'><h3>{size[g[0]]} rows, kept {html.escape(ids[g[0]])}</h3>"
                     + grid(g, lambda r: ids[r]) + "</div>" for g in groups) or "<p>None.</p>"),
                 "<h2>Outliers</h2>" + (grid(lowest, lambda r: f"{ids[r]} {density[r]:.3f}") if len(lowest)
                                        else "<p>None.</p>")]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>activeft scores report</title>"
            f"<style>{_CSS}</style></head><body><h1>Scores report</h1>\n" + "\n".join(sections) + "</body></html>\n")
