"""The calibrate stage: more training labels from the pool, after the selected images came back labeled.

Reads the store, the selection and its labels, and runs a calibration method (registered in
:mod:`.methods`) on the sharded pool: ``activedc`` (ActiveDC, Xu et al., CVPR 2024: pseudo-labels
drawn from calibrated class distributions, :mod:`.activedc`) or ``labelprop`` (label spreading over
the pool's nearest-neighbour graph, :mod:`.labelprop`). Writes ``calibrated.parquet`` (``id``,
``label``, ``source`` = labeled | pseudo, and the method's columns: ActiveDC's ``origin_id``, the
labeled sample a pseudo-label came from; label propagation's ``confidence``) and, last,
``calibration.json`` (method, parameters, class map, per-class counts, the method's statistics and,
only as a diagnostic when the store has labels, the pseudo-labels' accuracy, by confidence where
the method gives one), with ``report.html`` (per-class counts, confidence and reliability plots). The
table is the training set the finetune stage takes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import LabelsError, ParameterError
from ..io import protocol, storage
from ..io.labels import check_against, class_indices, class_map, read_labels
from ..io.store import EmbeddingStore, open_store
from ..params import BOOL, STORE, TABLE, TEXT, integer, merged_params, optional, parsed
from ..report import REPORT, calibration_page
from ..runtime import metrics
from ..select import read_selection
from ..stages import Command, Section, stage
from . import activedc, labelprop  # noqa: F401  (register the methods)
from .methods import Calibrator, Pseudo, get_calibrator, list_calibrators

log = logging.getLogger(__name__)
CALIBRATION = "calibration.json"
CALIBRATED = "calibrated.parquet"
KIND = protocol.Kind("calibration", CALIBRATION, r"calibrated\.parquet|calibration\.json|report\.html")


def _summary(table, values: dict) -> str:
    pseudo = table.column("source").to_pylist().count("pseudo")
    return f"{values['output']}: {table.num_rows - pseudo} labeled + {pseudo} pseudo-labeled samples"


def method_params() -> dict:
    """Every calibration method's parameters, each once (its help names the methods using it)."""
    return merged_params({name: get_calibrator(name).params for name in list_calibrators()})


@stage({
    "store": STORE, "selection": optional(TEXT), "labels": TABLE, "output": optional(TEXT),
    "method": parsed(get_calibrator, "one of " + ", ".join(list_calibrators()), choices=list_calibrators),
    "num_workers": integer(1), "use_gpu": BOOL, "seed": integer(), "overwrite": BOOL},
       output=KIND, flags={"output": ("-o",)},
       command=Command("calibrate", arguments=("store",), required=("output",), summary=_summary,
                       options=method_params, example="activeft calibrate stores/pool --selection sel/activeft "
                                                      "--labels labels.csv --output cal/ --method labelprop"),
       section=Section("train.calibrate", fixed=("store", "selection", "labels", "overwrite"),
                       extra={"output": (str, "{output}/calibration"), "enabled": (bool, True),
                              "params": (dict[str, Any], {})}, always=True, methods=get_calibrator))
def calibrate(store, *, labels, selection: str | None = None, output: str | None = None, method: str = "activedc",
              num_workers: int = 1, use_gpu: bool = False, seed: int = 0, overwrite: bool = False,
              **params) -> pa.Table:
    """Extend the labeled set with pseudo-labeled pool samples.

    Parameters
    ----------
    store : str or EmbeddingStore
        The embedding store the selection was made from.
    labels : str or pyarrow.Table
        ``id,label`` for the selected ids (CSV or Parquet; string or integer labels); for
        ``labelprop`` also the ids labeled before (earlier rounds, ``--exclude`` history), which count too.
    selection : str, optional
        The selection directory whose ids were labeled (``activedc`` needs it); for ``labelprop``
        without one every id of ``labels`` is a labeled row.
    output : str, optional
        Directory where ``calibrated.parquet`` and ``calibration.json`` are written. In Python it
        may be None: the table is returned, nothing is written.
    method : str, default="activedc"
        The calibration method; its own parameters follow. ``activedc`` is the paper's (ActiveDC);
        ``labelprop`` labels every pool row by label spreading over its nearest-neighbour graph. In
        Python: its parameters (``get_calibrator(method).params``) are further keyword arguments.
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
        The extended training set (``id``, ``label``, ``source`` and the method's columns).

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
    >>> spread = activeft.calibrate(store, selection=f"{d}/sel", labels=labels, method="labelprop")
    >>> spread.num_rows, spread.column_names
    (200, ['id', 'label', 'source', 'confidence'])
    """
    start = time.perf_counter()
    calibrator = get_calibrator(method)(seed=seed, **params)
    store = open_store(store)
    table = read_labels(labels)
    sel = None if selection is None else read_selection(selection)
    ids = _labeled_ids(table, sel, calibrator)
    classes = class_map(table.column("label"))
    if len(classes) < 2:
        raise LabelsError(f"the labels have a single class ({classes[0]!r}); calibration needs at least two")
    given = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist(), strict=True))
    rows = store.rows_of(ids, "labeled ids")
    label_of = [given[i] for i in ids]
    klass = class_indices(label_of, classes)
    output = storage.output_uri(output) if output is not None else None
    config = {**calibrator.config(), "labeled": len(ids)}
    with protocol.writing(output, KIND, config, resume=None, overwrite=overwrite) as dest:
        pseudo = calibrator.fit(store, rows, klass, classes, num_workers=num_workers, use_gpu=use_gpu)
        out = _table(store, ids, label_of, pseudo, classes, table.schema.field("label").type)
        metrics.inc("activeft_calibrate_pseudo_labels", len(pseudo.rows), stage="calibrate")
        truth = _truth(store, pseudo.rows, classes)
        info = {**protocol.header(), "store": store.uri, "selection": sel and sel.uri, "method": method,
                "params": calibrator.config(), "classes": classes, "labeled": len(rows), "pseudo": len(pseudo.rows),
                "per_class": {str(c): {"labeled": int((klass == j).sum()), "pseudo": int((pseudo.labels == j).sum())}
                              for j, c in enumerate(classes)}, **pseudo.info,
                "pseudo_label_accuracy": None if truth is None else float(np.mean(truth == pseudo.labels)),
                "reliability": _reliability(truth, pseudo), "seconds": round(time.perf_counter() - start, 3)}
        if output is not None:
            storage.write_parquet(dest.join(CALIBRATED), out)
            storage.write_bytes(dest.join(REPORT), calibration_page(info, out).encode())
            dest.commit(info)  # files.json, then calibration.json (last), then the swap on --overwrite
    acc = info["pseudo_label_accuracy"]
    log.info("calibrate: %s: %d labeled + %d pseudo-labeled in %.1f s%s", method, len(rows), len(pseudo.rows),
             info["seconds"], "" if acc is None else f"; pseudo-label accuracy {acc:.3f} (diagnostic, from the "
                                                     "store's labels)")
    return out


def _labeled_ids(table: pa.Table, sel, calibrator: Calibrator) -> list[str]:
    """The labeled ids, the selection's first: exactly the selection, or (a method with ``history``) it and
    any earlier labels, or without a selection every id of the table."""
    have = table.column("id").to_pylist()
    if sel is None and calibrator.history:
        return have
    if sel is None:
        raise ParameterError(f"calibration method {calibrator.name} needs the selection whose ids were labeled "
                             "(--selection)")
    selected = sel.ids
    if not calibrator.history:
        check_against(table, selected)
        return list(selected)
    missing = sorted(set(selected) - set(have))
    if missing:
        raise LabelsError(f"{len(missing)} ids of the selection have no label in the labels table "
                          f"(e.g. {', '.join(map(repr, missing[:3]))})")
    chosen = set(selected)
    return list(selected) + [i for i in have if i not in chosen]


def _table(store: EmbeddingStore, ids, label_of, pseudo: Pseudo, classes, label_type) -> pa.Table:
    pseudo_ids = store.take(pseudo.rows, ["id"]).column("id").to_pylist()
    columns = {"id": ids + pseudo_ids,
               "label": pa.array(label_of + [classes[c] for c in pseudo.labels.tolist()], label_type),
               "source": ["labeled"] * len(ids) + ["pseudo"] * len(pseudo_ids)}
    for name, values in pseudo.columns.items():
        columns[name] = pa.array([pseudo.labeled[name]] * len(ids) + list(values.tolist()))
    return pa.table(columns)


def _truth(store: EmbeddingStore, rows: np.ndarray, classes: list) -> np.ndarray | None:
    """The store's own class index of each row (-1: a class the labels do not have), for the diagnostics
    only; None when the store has no labels or they share no class name with the given ones."""
    if not store.has_labels or not len(rows):
        return None
    index = {str(c): j for j, c in enumerate(classes)}
    truth = np.array([index.get(str(t), -1) for t in store.take(rows, ["label"]).column("label").to_pylist()])
    if (truth < 0).all():
        log.warning("calibrate: the store's labels and the given labels share no class name; "
                    "no pseudo-label accuracy reported")
        return None
    return truth


def _reliability(truth: np.ndarray | None, pseudo: Pseudo, bins: int = 10) -> list[dict] | None:
    """Pseudo-label accuracy by confidence (ten equal bins), where the method gives a confidence."""
    if truth is None or "confidence" not in pseudo.columns:
        return None
    confidence = pseudo.columns["confidence"]
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [{"confidence": [b / bins, (b + 1) / bins], "rows": int((which == b).sum()),
             "accuracy": float(np.mean(truth[which == b] == pseudo.labels[which == b])) if (which == b).any() else None}
            for b in range(bins)]
