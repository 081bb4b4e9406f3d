"""ActiveDC calibration: statistics against numpy, the draw rules, no leakage, sharding, bad labels."""

import functools
import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sharding import sharded

import activeft
from activeft.calibrate import activedc as dc
from activeft.engine import Collectives, Pool
from activeft.errors import LabelsError

pytestmark = pytest.mark.timeout(240)
FAST = {"kmeans_runs": 2}


def clustered(n_per=150, k=4, d=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 2.5
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def make_store(path, labels=None, seed=0):
    x, y = clustered(seed=seed)
    y = y if labels is None else labels
    ids = [f"p{i:04d}" for i in range(len(x))]
    pq.write_table(pa.table({"id": ids, "embedding": list(x), "label": y}), path / "emb.parquet")
    return activeft.import_embeddings(str(path / "emb.parquet"), str(path / "store"), partition_size=200)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("dc")
    store = make_store(d)
    sel = activeft.select(store, 24, method="activeft", iterations=60, output=str(d / "sel"))
    truth = dict(zip(store.ids(), store.read(columns=["label"]).column("label").to_pylist(), strict=True))
    labels = pa.table({"id": sel.ids, "label": [int(truth[i]) for i in sel.ids]})  # the store's own classes
    pq.write_table(labels, d / "labels.parquet")
    return d, store, sel, labels, truth


def test_tukey_and_calibrated_statistics_equal_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for lam, ref in ((0.5, np.sign(x) * np.abs(x) ** 0.5), (0, np.sign(x) * np.log(np.abs(x))), (1, x)):
        np.testing.assert_allclose(dc.tukey(torch.from_numpy(x), lam).numpy(), ref)
    assert dc.tukey(torch.zeros(3), 0).tolist() == [0, 0, 0]
    t = np.sign(x) * np.abs(x) ** 0.5
    assign = torch.from_numpy(rng.integers(0, 3, 300))
    mean, cov, counts = dc.cluster_stats(Pool(torch.from_numpy(t), 0, 300), Collectives(), assign, [0, 2])
    for j, k in enumerate([0, 2]):
        rows = t[assign.numpy() == k]
        np.testing.assert_allclose(mean[j].numpy(), rows.mean(0), rtol=1e-10)
        np.testing.assert_allclose(cov[j].numpy(), np.cov(rows.T), rtol=1e-8, atol=1e-12)
        assert counts[j] == len(rows)


def test_samples_per_label_rule():
    assert dc.samples_per_label(100, 10) == 2 and dc.samples_per_label(499, 10) == 2
    assert dc.samples_per_label(500, 10) == 1 and dc.samples_per_label(12811, 1000) == 2


def test_wasserstein_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=500), rng.normal(0.3, 2, size=37)
    assert dc.wasserstein_1d(u, v) == pytest.approx(scipy_stats.wasserstein_distance(u, v), rel=1e-12)


def test_calibration_output_and_rules(setup, tmp_path):
    d, store, sel, labels, truth = setup
    out = activeft.calibrate(store, selection=str(d / "sel"), labels=str(d / "labels.parquet"),
                             output=str(tmp_path / "cal"), **FAST)
    assert out.column_names == ["id", "label", "source", "origin_id"]
    src = out.column("source").to_pylist()
    pseudo = [i for i, s in zip(out.column("id").to_pylist(), src, strict=True) if s == "pseudo"]
    assert out.column("id").to_pylist()[:24] == sel.ids and src[:24] == ["labeled"] * 24
    assert not set(pseudo) & set(sel.ids) and len(set(pseudo)) == len(pseudo)
    assert 0 < len(pseudo) <= 24 * 2  # 24 labels over 4 classes: 2 draws per label
    label_of = dict(zip(labels.column("id").to_pylist(), labels.column("label").to_pylist(), strict=True))
    for row in out.slice(24).to_pylist():  # a pseudo-label is its origin's label
        assert row["label"] == label_of[row["origin_id"]]
    info = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert info["classes"] == [0, 1, 2, 3] and info["params"]["samples_per_label"] == 2
    assert info["beta"] == pytest.approx(1 - math.exp(-0.7 * 100 * 24 / 600))
    assert info["pseudo"] == len(pseudo) and sum(c["pseudo"] for c in info["per_class"].values()) == len(pseudo)
    assert info["pseudo_label_accuracy"] > 0.8  # well-separated clusters: pseudo-labels mostly right
    assert pq.read_table(tmp_path / "cal" / "calibrated.parquet").equals(out)


def test_store_labels_never_used(setup, tmp_path):
    d, store, sel, labels, truth = setup
    rng = np.random.default_rng(9)
    scrambled = make_store(tmp_path, labels=rng.permutation(600) % 7)
    a = activeft.calibrate(store, selection=str(d / "sel"), labels=labels, **FAST)
    b = activeft.calibrate(scrambled, selection=str(d / "sel"), labels=labels, **FAST)
    assert a.equals(b)


def test_single_labeled_sample_class_and_determinism(setup):
    d, store, sel, labels, truth = setup
    ids = labels.column("id").to_pylist()
    renamed = [f"class-{v}" for v in labels.column("label").to_pylist()[1:]]
    odd = labels.set_column(1, "label", pa.array(["rare"] + renamed))
    out = activeft.calibrate(store, selection=str(d / "sel"), labels=odd, seed=3, **FAST)
    rare = [r for r in out.to_pylist() if r["label"] == "rare"]
    assert rare[0]["id"] == ids[0] and all(r["origin_id"] == ids[0] for r in rare[1:])
    again = activeft.calibrate(store, selection=str(d / "sel"), labels=odd, seed=3, **FAST)
    other = activeft.calibrate(store, selection=str(d / "sel"), labels=odd, seed=4, **FAST)
    assert out.equals(again) and not out.equals(other)


def test_emd_filter_and_bounded_redraws(setup):
    d, store, sel, labels, truth = setup
    out = activeft.calibrate(store, selection=str(d / "sel"), labels=labels, emd_filter=True, **FAST)
    pseudo = out.filter(pa.compute.equal(out.column("source"), "pseudo"))
    assert pseudo.num_rows > 0 and len(set(pseudo.column("id").to_pylist())) == pseudo.num_rows
    # one draw allowed per label and 10 draws each: every draw whose rows are taken is a skip, never a hang
    many = activeft.calibrate(store, selection=str(d / "sel"), labels=labels, samples_per_label=10, max_draws=1,
                              **FAST)
    assert many.num_rows - 24 <= 240


def test_sharded_calibration_equals_one_process(setup):
    """Three ranks in threads (a Ray Train group of two: test_select's two-worker test)."""
    d, store, sel, labels, truth = setup
    x = dc.tukey(torch.from_numpy(store.embeddings()), 0.5)
    rows = np.array(store.rows_of(sel.ids))
    params = {"alpha": 0.7, "xi": 0.2, "samples_per_label": 2, "clusters": 4, "emd_filter": True, "kmeans_runs": 2}
    job = functools.partial(dc.calibrate, labeled_rows=rows, labeled_class=labels.column("label").to_numpy(),
                            n_classes=4, **params)
    one = job(Pool(x, 0, len(x)), Collectives())
    assert len(one["rows"]) > 24 and one["skipped"] < 24
    inertia = one.pop("kmeans_inertia")
    for got in sharded(lambda pool, comm: job(pool, comm), x, [0, 150, 377, len(x)]):
        assert got.pop("kmeans_inertia") == pytest.approx(inertia, rel=1e-9)  # (summed in another order)
        assert got == one


def test_label_table_errors(setup, tmp_path, capsys):
    from activeft.cli import main

    d, store, sel, labels, truth = setup
    ids, y = labels.column("id").to_pylist(), labels.column("label").to_pylist()
    cases = {
        "extra.csv": ("id,label\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, y, strict=True)) + "p9999,x\nzz,y\n",
                      "labels table has 2 ids that are not in the selection \\(e.g. 'p9999', 'zz'\\)"),
        "missing.csv": ("id,label\n" + "".join(f"{i},{v}\n" for i, v in zip(ids[3:], y[3:], strict=True)),
                        "3 ids of the selection have no label in the labels table"),
        "dupes.csv": ("id,label\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, y, strict=True)) + f"{ids[0]},x\n",
                      f"labels table has 1 duplicate ids \\(e.g. '{ids[0]}'\\)"),
        "nolabel.csv": ("id,class\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, y, strict=True)),
                        "has no 'label' column"),
        "one.csv": ("id,label\n" + "".join(f"{i},same\n" for i in ids), "a single class \\('same'\\)"),
        "empty.csv": ("id,label\n", "labels table is empty"),
    }
    for name, (text, pattern) in cases.items():
        (tmp_path / name).write_text(text)
        code = main(["calibrate", store.uri, "--selection", str(d / "sel"), "--labels", str(tmp_path / name),
                     "-o", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 1 and "\n" not in err and re.search(pattern, err), (name, err)
        assert not (tmp_path / "out").exists()
    with pytest.raises(LabelsError):
        activeft.calibrate(store, selection=str(d / "sel"), labels=labels.slice(1))
