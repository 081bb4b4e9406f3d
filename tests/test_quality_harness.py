"""The quality benchmark's harness runs end to end on a 2,000-image Fashion-MNIST subset, one seed."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


@pytest.mark.timeout(60)
def test_quality_harness_small(tmp_path):
    import quality

    result = quality.main(["--pool-size", "2000", "--test-size", "1000", "--budgets", "20,40", "--seeds", "1",
                           "--workdir", str(tmp_path), "--out", str(tmp_path / "q.json")])
    rows = result["rows"]
    assert [r["method"] for r in rows[:5]] == list(quality.METHODS) and len(rows) == 10
    assert all(0 < r["accuracy"] <= 1 and r["select_s"] >= 0 for r in rows)
    assert all(r["pseudo"] > 0 and 0 <= r["pseudo_accuracy"] <= 1 for r in rows if r["method"] == "activedc")
    assert result["pool"] == 2000 and result["test"] == 1000 and (tmp_path / "q.json").exists()
    assert result["table"].count("\n") == 6 and "| activedc |" in result["table"]
