"""The quality benchmark's harness runs end to end on a 2,000-image Fashion-MNIST subset, one seed."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


@pytest.mark.timeout(180)
def test_quality_harness_small(tmp_path):
    import quality

    methods = ["random", "activedc", "herding", "bilaf"]
    result = quality.main(["--pool-size", "2000", "--test-size", "1000", "--budgets", "20", "--seeds", "1",
                           "--methods", ",".join(methods), "--workdir", str(tmp_path),
                           "--out", str(tmp_path / "q.json")])
    rows = result["rows"]
    assert [r["method"] for r in rows] == methods and set(methods) <= set(quality.METHODS)
    assert all(0 < r["accuracy"] <= 1 and r["select_s"] >= 0 for r in rows)
    assert all(r["pseudo"] > 0 and 0 <= r["pseudo_accuracy"] <= 1 for r in rows if r["method"] == "activedc")
    assert result["pool"] == 2000 and result["test"] == 1000 and (tmp_path / "q.json").exists()
    assert result["table"].count("\n") == 1 + len(methods) and "| activedc |" in result["table"]


@pytest.mark.timeout(120)
def test_backbone_holdout_is_the_pca_holdout(tmp_path):
    """A store of other features split for validation holds out the same images as the PCA split, rows intact."""
    import fashion_mnist
    import numpy as np

    pool, _ = fashion_mnist.build_stores(str(tmp_path), pool_size=2000, test_size=100)
    _, pca_val = fashion_mnist.build_stores(str(tmp_path), pool_size=2000, test_size=100, holdout=300)
    rest, val = fashion_mnist.split_holdout(pool, 300, str(tmp_path / "split"))
    assert sorted(val.ids()) == sorted(pca_val.ids()) and len(val) == 300
    assert sorted(rest.ids() + val.ids()) == sorted(pool.ids())
    whole = dict(zip(pool.ids(), pool.read(columns=["embedding"]).column("embedding").to_pylist(), strict=True))
    labels = dict(zip(pool.ids(), pool.read(columns=["label"]).column("label").to_pylist(), strict=True))
    got = val.read(columns=["id", "embedding", "label"]).to_pylist()
    assert all(np.allclose(r["embedding"], whole[r["id"]], atol=1e-6) and r["label"] == labels[r["id"]] for r in got)
