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
