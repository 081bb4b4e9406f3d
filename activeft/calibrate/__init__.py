"""The calibrate stage: ActiveDC, after the selected images came back labeled.

Reads the store, the selection and its labels; runs the distribution calibration of
:mod:`.activedc` on the sharded pool; writes ``calibrated.parquet`` (``id``,
``label``, ``source`` = labeled | pseudo, ``origin_id``: the labeled sample a pseudo-label came
from) and, last, ``calibration.json`` (parameters, class map, per-class counts, skipped draws and,
only as a diagnostic when the store has labels, the pseudo-label accuracy). The table is the
training set the finetune stage takes.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import pyarrow as pa

from ..errors import LabelsError
from ..io import protocol, storage
from ..io.labels import check_against, class_indices, class_map, read_labels
from ..io.store import EmbeddingStore, open_store
from ..params import BOOL, STORE, TABLE, TEXT, Rule, integer, number, optional
from ..runtime import metrics
from ..runtime.runner import run
from ..select import read_selection
from ..stages import Command, Section, stage
from . import activedc as dc

log = logging.getLogger(__name__)
CALIBRATION = "calibration.json"
CALIBRATED = "calibrated.parquet"
KIND = protocol.Kind("calibration", CALIBRATION, r"calibrated\.parquet|calibration\.json")


def _summary(table, values: dict) -> str:
    pseudo = table.column("source").to_pylist().count("pseudo")
    return f"{values['output']}: {table.num_rows - pseudo} labeled + {pseudo} pseudo-labeled samples"


@stage({
    "store": STORE, "selection": TEXT, "labels": TABLE, "output": optional(TEXT), "alpha": number(0),
    "xi": number(0), "tukey_lambda": number(), "clusters": optional(integer(1)),
    "samples_per_label": Rule(str, lambda v: v == "auto" or (str(v).isdigit() and int(v) >= 1),
                              "'auto' or an int >= 1", int | str),
    "emd_filter": BOOL, "max_draws": integer(1), "kmeans_runs": integer(1), "num_workers": integer(1),
    "use_gpu": BOOL, "seed": integer(), "overwrite": BOOL},
       output=KIND, flags={"output": ("-o",)},
       command=Command("calibrate", arguments=("store",), required=("output",), summary=_summary,
                       example="activeft calibrate stores/pool --selection sel/activeft --labels labels.csv "
                               "--output cal/"),
       section=Section("train.calibrate", fixed=("store", "selection", "labels", "overwrite"),
                       extra={"output": (str, "{output}/calibration"), "enabled": (bool, True)}, always=True))
def calibrate(store, *, selection, labels, output: str | None = None, alpha: float = 0.7, xi: float = 0.2,
              tukey_lambda: float = 0.5, clusters: int | None = None, samples_per_label: str | int = "auto",
              emd_filter: bool = False, max_draws: int = 50, kmeans_runs: int = 10, num_workers: int = 1,
              use_gpu: bool = False, seed: int = 0, overwrite: bool = False) -> pa.Table:
    """Extend the labeled set with pseudo-labeled pool samples drawn from calibrated class distributions.

    Parameters
    ----------
    store : str or EmbeddingStore
        The embedding store the selection was made from.
    selection : str
        The selection directory whose ids were labeled.
    labels : str or pyarrow.Table
        ``id,label`` for exactly the selected ids (CSV or Parquet; string or integer labels).
    output : str, optional
        Directory for ``calibrated.parquet`` and ``calibration.json``.
    alpha : float, default=0.7
        beta = 1 - exp(-alpha * p) weighs the labeled class mean against its cluster's mean
        (p = labeled percentage of the pool). The official README uses 0.7 on CIFAR-10 at 1%.
    xi : float, default=0.2
        Added to every entry of the cluster covariance (the official value).
    tukey_lambda : float, default=0.5
        Tukey transform exponent (0: log).
    clusters : int, optional
        k of the k-means; default the number of labeled classes.
    samples_per_label : "auto" or int
        Draws per labeled sample; auto is 2 below 50 labels per class, else 1.
    emd_filter : bool
        Keep a draw only if it does not raise the 1-D Wasserstein distance of mean activations.
    max_draws : int, default=50
        Draws per labeled sample before it is skipped (the official code never gives up).
    kmeans_runs : int, default=10
        k-means runs (different seeds) of which the lowest inertia is kept (the code's ``nredo``).
    num_workers : int, default=1
        Ray Train workers (1: in this process); the same seed gives the same output for any number.
    use_gpu : bool
        Run on GPUs.
    seed : int, default=0
        Random seed.
    overwrite : bool
        Replace an existing calibration in ``output`` (only what a calibration run wrote: any other file
        there is refused); the new one is written beside it and swapped in when complete.

    Returns
    -------
    pyarrow.Table
        The extended training set (``id``, ``label``, ``source``, ``origin_id``).

    Examples
    --------
    >>> import activeft, numpy as np, pyarrow as pa, tempfile
    >>> d = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(size=(100, 8)) + 6 * np.eye(8)[i] for i in range(2)]).astype("float32")
    >>> np.save(f"{d}/x.npy", x)
    >>> _ = open(f"{d}/ids.txt", "w").write("\\n".join(f"i{j}" for j in range(200)))
    >>> store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
    >>> sel = activeft.select(store, 10, method="activeft", iterations=30, output=f"{d}/sel")
    >>> labels = pa.table({"id": sel.ids, "label": ["a" if int(i[1:]) < 100 else "b" for i in sel.ids]})
    >>> table = activeft.calibrate(store, selection=f"{d}/sel", labels=labels, kmeans_runs=1)
    >>> {s: table.column("source").to_pylist().count(s) for s in ("labeled", "pseudo")}
    {'labeled': 10, 'pseudo': 15}
    """
    start = time.perf_counter()
    store = open_store(store)
    sel = read_selection(selection)
    table = read_labels(labels)
    check_against(table, sel.ids)
    classes = class_map(table.column("label"))
    given = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist(), strict=True))
    rows = store.rows_of(sel.ids, "selected ids")
    label_of = [given[i] for i in sel.ids]
    klass = class_indices(label_of, classes)
    if len(classes) < 2:
        raise LabelsError(f"the labels have a single class ({classes[0]!r}); calibration needs at least two")
    per_label = dc.samples_per_label(len(rows), len(classes)) if samples_per_label == "auto" else int(samples_per_label)
    output = storage.output_uri(output) if output is not None else None
    params = {"alpha": alpha, "xi": xi, "tukey_lambda": tukey_lambda, "clusters": clusters or len(classes),
              "samples_per_label": per_label, "emd_filter": emd_filter, "max_draws": max_draws,
              "kmeans_runs": kmeans_runs, "seed": seed}
    job = functools.partial(_job, rows, klass, len(classes), params)
    with protocol.writing(output, KIND, params, resume=None, overwrite=overwrite) as dest:
        result = run(job, store, num_workers=num_workers, use_gpu=use_gpu,
                     transform=functools.partial(dc.tukey, lam=tukey_lambda))
        pseudo_ids = store.take(result["rows"], ["id"]).column("id").to_pylist()
        origin = [sel.ids[i] for i in result["origin"]]
        out = pa.table({
            "id": sel.ids + pseudo_ids,
            "label": pa.array(label_of + [given[o] for o in origin], table.schema.field("label").type),
            "source": ["labeled"] * len(rows) + ["pseudo"] * len(pseudo_ids),
            "origin_id": pa.array([None] * len(rows) + origin, pa.string()),
        })
        metrics.inc("activeft_calibrate_pseudo_labels", len(pseudo_ids), stage="calibrate")
        per_class = {str(c): {"labeled": int((klass == j).sum()),
                              "pseudo": sum(given[o] == c for o in origin)} for j, c in enumerate(classes)}
        info = {**protocol.header(), "store": store.uri, "selection": sel.uri, "params": params, "classes": classes,
                "labeled": len(rows), "pseudo": len(pseudo_ids), "per_class": per_class,
                "skipped": result["skipped"], "draws": result["draws"], "emd_rejected": result["emd_rejected"],
                "beta": result["beta"], "labeled_percent": result["percent"],
                "class_cluster": {str(classes[int(c)]): k for c, k in result["class_cluster"].items()},
                "cluster_sizes": result["cluster_sizes"], "kmeans_inertia": result["kmeans_inertia"],
                "pseudo_label_accuracy": _diagnostic_accuracy(store, result["rows"], origin, given),
                "seconds": round(time.perf_counter() - start, 3)}
        if output is not None:
            storage.write_parquet(dest.join(CALIBRATED), out)
            dest.commit(info)  # files.json, then calibration.json (last), then the swap on --overwrite
    acc = info["pseudo_label_accuracy"]
    log.info("calibrate: %d labeled + %d pseudo-labeled (%d skipped) in %.1f s%s", len(rows), len(pseudo_ids),
             result["skipped"], info["seconds"], "" if acc is None else f"; pseudo-label accuracy {acc:.3f} "
             "(diagnostic, from the store's labels)")
    return out


def _job(rows, klass, n_classes, params, pool, comm, checkpoints) -> dict:
    return dc.calibrate(pool, comm, rows, klass, n_classes, **{k: v for k, v in params.items() if k != "tukey_lambda"})


def _diagnostic_accuracy(store: EmbeddingStore, rows, origin, given) -> float | None:
    """Share of pseudo-labels equal to the store's own labels. Read only after the procedure ran."""
    if not store.has_labels or not rows:
        return None
    truth = [str(t) for t in store.take(rows, ["label"]).column("label").to_pylist()]
    if not set(truth) & {str(v) for v in given.values()}:
        log.warning("calibrate: the store's labels and the given labels share no class name; "
                    "no pseudo-label accuracy reported")
        return None
    return float(np.mean([t == str(given[o]) for t, o in zip(truth, origin, strict=True)]))
