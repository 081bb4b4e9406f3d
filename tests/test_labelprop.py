"""Label propagation (``calibrate --method labelprop``): the formula, any number of workers, the stage, and
the finetune that weighs rows by their confidence."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sharding import sharded

import activeft
from activeft.cli import main
from activeft.engine import Collectives, Pool, propagate
from activeft.engine.graph import knn_graph
from activeft.engine.propagate import spread_labels
from activeft.errors import LabelsError


def blobs(n=300, d=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(classes, d))[y] * 2.5 + rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32"), y


def reference(pool, rows, classes, n_classes, k, alpha, iterations, tol):
    """The documented formula, dense: W = (A + A^T) / 2, S = D^-1/2 W D^-1/2, F <- alpha S F + (1 - alpha) Y."""
    graph = knn_graph(pool, Collectives(), k)[0].numpy()
    n = pool.size
    a = np.zeros((n, n))
    a[np.repeat(np.arange(n), k), graph.reshape(-1)] = 1
    w = (a + a.T) / 2
    s = w / np.sqrt(np.outer(w.sum(1), w.sum(1)))
    y = np.zeros((n, n_classes))
    y[rows, classes] = 1
    f = y.copy()
    for it in range(iterations):
        new = alpha * s @ f + (1 - alpha) * y
        change, f = np.abs(new - f).sum(), new
        if change < tol:
            return f, it + 1
    return f, iterations


@pytest.mark.parametrize("alpha", [0.2, 0.9])
def test_spreading_is_the_reference_formula(alpha):
    x, y = blobs()
    pool = Pool(torch.from_numpy(x), 0, len(x))
    rows = np.arange(0, 300, 50)
    f, info = spread_labels(pool, Collectives(), torch.from_numpy(rows), torch.from_numpy(y[rows]), 3, k=7,
                            alpha=alpha, iterations=100, tol=1e-6)
    want, iterations = reference(pool, rows, y[rows], 3, 7, alpha, 100, 1e-6)
    assert info["iterations"] == iterations and info["edges"] == 300 * 7
    np.testing.assert_allclose(f.numpy(), want, rtol=0, atol=1e-12)
    assert (f.argmax(1).numpy() == y).mean() > 0.9


def test_any_number_of_workers_gives_the_same_scores(monkeypatch):
    x, y = blobs(seed=1)
    x, rows = torch.from_numpy(x), torch.arange(0, 300, 30)

    def job(pool, comm):
        return spread_labels(pool, comm, rows, torch.from_numpy(y[rows.numpy()]), 3, k=6, alpha=0.5, iterations=40,
                             tol=1e-9)

    (one, info), = sharded(job, x, [0, 300])
    for f, i in sharded(job, x, [0, 97, 211, 300]):
        assert torch.equal(f, one) and i == info  # every bit, and the same stopping iteration
    monkeypatch.setattr(propagate, "EDGES", 7)  # the edges in small blocks: the same sums
    (f, i), = sharded(job, x, [0, 300])
    assert torch.equal(f, one) and i == info


@pytest.fixture
def blob_store(tmp_path):
    x, y = blobs()
    ids = [f"r{i:03d}" for i in range(len(x))]
    pq.write_table(pa.table({"id": ids, "embedding": list(x), "label": y}), tmp_path / "e.parquet")
    store = activeft.import_embeddings(str(tmp_path / "e.parquet"), str(tmp_path / "store"))
    sel = activeft.select(store, 9, method="kmeans", iterations=10, output=str(tmp_path / "sel"))
    truth = dict(zip(ids, y.tolist(), strict=True))
    return store, sel, truth


def test_labelprop_labels_every_row_with_its_confidence(blob_store, tmp_path):
    store, sel, truth = blob_store
    labels = pa.table({"id": sel.ids, "label": [truth[i] for i in sel.ids]})
    table = activeft.calibrate(store, selection=sel.uri, labels=labels, method="labelprop", output=str(tmp_path / "c"))
    assert table.column_names == ["id", "label", "source", "confidence"] and table.num_rows == 300
    rows = table.to_pylist()
    assert all(r["confidence"] == 1.0 for r in rows if r["source"] == "labeled")
    assert all(0 < r["confidence"] <= 1 for r in rows)
    info = json.loads((tmp_path / "c" / "calibration.json").read_text())
    assert info["method"] == "labelprop" and info["params"]["neighbours"] == 10 and info["pseudo"] == 291
    assert info["pseudo_label_accuracy"] > 0.9
    assert sum(b["rows"] for b in info["reliability"]) == 291
    page = (tmp_path / "c" / "report.html").read_text()
    assert all(f"<h2>{h}</h2>" in page for h in ("Class balance", "Confidence", "Reliability")) and "291" in page

    confident = activeft.calibrate(store, selection=sel.uri, labels=labels, method="labelprop", min_confidence=0.9)
    assert all(c >= 0.9 for c in confident.column("confidence").to_pylist())
    capped = activeft.calibrate(store, selection=sel.uri, labels=labels, method="labelprop", class_cap=0.1)
    pseudo = [r for r in capped.to_pylist() if r["source"] == "pseudo"]
    assert max(np.bincount([r["label"] for r in pseudo])) == 10  # 0.1 x 300 rows / 3 classes, the most confident
    kept = {r["id"] for r in pseudo}
    for c in range(3):  # each class keeps its most confident rows
        ours = [r["confidence"] for r in pseudo if r["label"] == c]
        left = [r["confidence"] for r in rows if r["source"] == "pseudo" and r["label"] == c and r["id"] not in kept]
        assert min(ours) >= max(left)


def test_earlier_labels_count_for_labelprop_only(blob_store):
    store, sel, truth = blob_store
    earlier = [i for i in sorted(truth) if i not in sel.ids][:6]
    labels = pa.table({"id": sel.ids + earlier, "label": [truth[i] for i in sel.ids + earlier]})
    table = activeft.calibrate(store, selection=sel.uri, labels=labels, method="labelprop")
    labeled = [r["id"] for r in table.to_pylist() if r["source"] == "labeled"]
    assert labeled == sel.ids + earlier
    with pytest.raises(LabelsError, match="6 ids that are not in the selection"):
        activeft.calibrate(store, selection=sel.uri, labels=labels, kmeans_runs=1)  # activedc: the selection only
    with pytest.raises(LabelsError, match="1 ids of the selection have no label"):
        activeft.calibrate(store, selection=sel.uri, labels=labels.slice(1), method="labelprop")


def test_cli_calibrate_labelprop_and_its_parameters(blob_store, tmp_path, capsys):
    store, sel, truth = blob_store
    pq.write_table(pa.table({"id": sel.ids, "label": [truth[i] for i in sel.ids]}), tmp_path / "labels.parquet")
    args = ["calibrate", store.uri, "--selection", sel.uri, "--labels", str(tmp_path / "labels.parquet"), "-o",
            str(tmp_path / "cli"), "--method", "labelprop"]
    assert main([*args, "--neighbours", "5", "--alpha", "0.5"]) == 0
    assert "9 labeled + 291 pseudo-labeled samples" in capsys.readouterr().out
    params = json.loads((tmp_path / "cli" / "calibration.json").read_text())["params"]
    assert (params["neighbours"], params["alpha"], params["iterations"]) == (5, 0.5, 30)
    assert main([*args, "--overwrite", "--alpha", "1.5"]) == 1
    assert "The 'alpha' parameter of labelprop must be a float > 0 and <= 0.9999" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--method", "labelprob"]) == 1
    assert "unknown calibration method 'labelprob'" in capsys.readouterr().err


def test_finetune_weighs_rows_by_their_confidence(blob_store, tmp_path):
    store, sel, truth = blob_store
    ids = sorted(truth)[:60]
    wrong = ids[:20]  # mislabeled, with no weight: as if they were not there
    table = pa.table({"id": ids, "label": [(truth[i] + 1) % 3 if i in wrong else truth[i] for i in ids],
                      "confidence": [0.0 if i in wrong else 1.0 for i in ids]})
    weighted = activeft.finetune(store, train=table, output=str(tmp_path / "w"))
    clean = activeft.finetune(store, train=table.slice(20).drop_columns(["confidence"]), output=str(tmp_path / "c"))
    a, b = (activeft.load_model(str(tmp_path / d))[0].head.weight.detach() for d in ("w", "c"))
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert weighted["config"]["weighted"] and not clean["config"]["weighted"]


def test_the_loop_trains_its_final_model_on_propagated_labels(blob_store, tmp_path):
    store, _, _ = blob_store
    st = activeft.loop(store, state=str(tmp_path / "loop"), round_budget=6, rounds=2, oracle="store-labels",
                       first="random", final="linear", final_labels="labelprop")
    spread = json.loads((tmp_path / "loop" / "final" / "round-1-labelprop" / "calibration.json").read_text())
    assert (spread["labeled"], spread["pseudo"], spread["selection"]) == (12, 288, None)
    metrics = json.loads((tmp_path / "loop" / "final" / "round-1" / "metrics.json").read_text())
    assert metrics["config"]["train_rows"] == 300 and metrics["config"]["weighted"] and st["final"]["mode"] == "linear"
