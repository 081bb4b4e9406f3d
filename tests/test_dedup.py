"""Near-duplicate groups (``activeft dedup``, ``select --dedup``): the exact pairs and their components,
any number of workers and cells, the keep rules, the table, the command line, and the selection
guarantee over every registered selector."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sharding import sharded

import activeft
from activeft.cli import main
from activeft.engine import Collectives, Pool
from activeft.engine.dedup import components, duplicate_groups, original, renumber, without
from activeft.select import get_selector, list_selectors

T = 0.97


def planted(n=400, d=16, copies=60, seed=0):
    """Unit rows: ``n`` distinct ones and ``copies`` near-copies (some chained: copies of copies)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    src = rng.choice(n, copies, replace=False)
    extra = x[src] + 0.03 * rng.normal(size=(copies, d))
    extra[-10:] = extra[:10] + 0.03 * rng.normal(size=(10, d))  # three-row groups
    x = np.concatenate([x, extra])
    return torch.from_numpy((x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32"))


def reference_groups(x, threshold):
    """Dense: the pairs >= threshold (float64) and their components, each row's smallest group row."""
    s = x.double() @ x.double().T
    n = len(x)
    label = np.arange(n)
    changed = True
    while changed:
        changed = False
        for i, j in zip(*np.nonzero(np.triu(s.numpy() >= threshold, 1)), strict=True):
            lo = min(label[i], label[j])
            if label[i] != lo or label[j] != lo:
                label[i] = label[j] = lo
                changed = True
    return label


def test_groups_are_the_components_of_the_exact_pairs():
    x = planted()
    label = reference_groups(x, T)
    found = duplicate_groups(Pool(x, 0, len(x)), Collectives(), T)
    in_group = np.bincount(label, minlength=len(x))[label] > 1
    assert found.info["rows_in_groups"] == in_group.sum() and found.info["groups"] == len(np.unique(label[in_group]))
    assert found.rows.tolist() == [i for i in range(len(x)) if in_group[i] and label[i] != i]
    assert found.kept.tolist() == label[found.rows.numpy()].tolist()  # keep="first": the smallest row
    assert (found.info["duplicates"], found.info["pairs"]) == (60, 70)
    sims = (x[found.rows] * x[found.kept]).sum(1)
    torch.testing.assert_close(found.similarity, sims, rtol=0, atol=1e-6)

    central = duplicate_groups(Pool(x, 0, len(x)), Collectives(), T, keep="central")
    for g in np.unique(label[in_group]):
        rows = np.flatnonzero(label == g)
        d2 = ((x[rows].double() - x[rows].double().mean(0)) ** 2).sum(1)
        kept = rows[int(torch.argmin(d2))]
        assert set(central.rows.tolist()) & set(rows.tolist()) == set(rows.tolist()) - {kept}
    labeled = duplicate_groups(Pool(x, 0, len(x)), Collectives(), T, preferred=torch.tensor([401, 450]))
    assert 401 not in labeled.rows.tolist() and set(labeled.kept.tolist()) >= {401, 450}


def test_components_hook_long_chains():
    n = 1000
    src, dst = torch.arange(n - 1).flip(0), torch.arange(1, n).flip(0)
    assert torch.equal(components(src, dst, n), torch.zeros(n, dtype=torch.long))
    assert components(torch.tensor([3, 5]), torch.tensor([4, 1]), 6).tolist() == [0, 1, 2, 3, 3, 1]


def test_any_number_of_workers_and_cells_give_the_same_groups():
    x = planted(n=600, copies=100, seed=3)
    runs = {}
    for name, kw in (("one cell", {}), ("cells", {"one_cell_up_to": 100, "cell_rows": 100})):
        def job(pool, comm, kw=kw):
            return duplicate_groups(pool, comm, 0.96, keep="central", preferred=torch.tensor([600, 7]), **kw)

        (one,) = sharded(job, x, [0, len(x)])
        for got in sharded(job, x, [0, 97, 411, len(x)]):
            assert torch.equal(got.rows, one.rows) and torch.equal(got.kept, one.kept)
            assert torch.equal(got.similarity, one.similarity) and got.info == one.info
        runs[name] = one
    cells = runs["cells"]
    assert cells.info["cells"] == 7 and 1 < cells.info["cells_searched_per_row"] < 7
    for a, b in zip((cells.rows, cells.kept, cells.similarity), (runs["one cell"].rows, runs["one cell"].kept,
                                                                  runs["one cell"].similarity), strict=True):
        assert torch.equal(a, b)  # no pair escaped across a cell border


def test_without_renumbers_rows():
    x = torch.arange(20.0)[:, None]
    dropped = torch.tensor([0, 3, 4, 9, 19])
    kept = torch.tensor([r for r in range(20) if r not in dropped.tolist()])
    assert torch.equal(original(torch.arange(15), dropped), kept)
    assert torch.equal(renumber(kept, dropped), torch.arange(15))
    part = without(Pool(x[5:12], 5, 20), dropped)
    assert (part.offset, part.size, part.x.flatten().tolist()) == (2, 15, [5, 6, 7, 8, 10, 11])


@pytest.fixture
def store(tmp_path):
    x = planted().numpy()
    ids = [f"r{i:03d}" for i in range(len(x))]
    pq.write_table(pa.table({"id": ids, "embedding": list(x)}), tmp_path / "e.parquet")
    return activeft.import_embeddings(str(tmp_path / "e.parquet"), str(tmp_path / "store"))


def test_dedup_stage_writes_the_table_and_counts(store, tmp_path):
    table = activeft.dedup(store, threshold=T, output=str(tmp_path / "d"))
    assert table.column_names == ["id", "kept_id", "similarity"] and table.num_rows == 60
    assert pq.read_table(tmp_path / "d" / "duplicates.parquet").equals(table)
    info = json.loads((tmp_path / "d" / "dedup.json").read_text())
    assert (info["duplicates"], info["pairs"], info["keep"], info["threshold"]) == (60, 70, "first", T)
    rows = table.to_pylist()
    assert all(r["id"] > r["kept_id"] for r in rows)  # first: the group's first row of the store
    labeled = activeft.dedup(store, threshold=T, keep="labeled", labeled=[rows[0]["id"]])
    assert rows[0]["id"] in labeled.column("kept_id").to_pylist()
    assert rows[0]["id"] not in labeled.column("id").to_pylist()
    central = activeft.dedup(store, threshold=T, keep="central")
    assert central.num_rows == 60 and central.column("kept_id").to_pylist() != table.column("kept_id").to_pylist()
    with pytest.raises(activeft.errors.ParameterError, match="keep='labeled' needs the labeled ids"):
        activeft.dedup(store, threshold=T, keep="labeled")


@pytest.mark.parametrize("threshold", ["0", "1.5", "-0.2", "nan"])
def test_a_threshold_outside_0_1_is_one_line_and_writes_nothing(store, tmp_path, capsys, threshold):
    out = tmp_path / "d"
    assert main(["dedup", store.uri, "--threshold", threshold, "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'threshold' parameter of dedup must be a float > 0 and <= 1" in err
    assert not out.exists()
    assert main(["select", store.uri, "--budget", "5", "--dedup", threshold, "-o", str(out)]) == 1
    assert "'dedup' parameter of select" in capsys.readouterr().err and not out.exists()


def test_the_dedup_command(store, tmp_path, capsys):
    assert main(["dedup", "--help"]) == 0
    assert "--threshold" in capsys.readouterr().out
    assert main(["dedup", store.uri, "--threshold", str(T), "--keep", "central", "-o", str(tmp_path / "d")]) == 0
    assert "60 near-duplicates in" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "d" / "duplicates.parquet").num_rows == 60


@pytest.mark.parametrize("method", list_selectors())
def test_a_selection_with_dedup_holds_no_two_near_copies(store, tmp_path, method):
    x = torch.from_numpy(store.embeddings())
    labeled = ["r000", "r401"]
    sel = activeft.select(store, 40, method=method, dedup=T, exclude=labeled, output=str(tmp_path / "sel"),
                          **get_selector(method).test_params)
    rows = store.rows_of(sel.ids)
    s = (x[rows] @ x[rows].T).fill_diagonal_(0)
    assert float(s.max()) < T
    assert float((x[rows] @ x[store.rows_of(labeled)].T).max()) < T  # nor a near-copy of a labeled row
    info = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert info["dedup"]["dropped"] == 60 and info["config"]["dedup"] == T  # r401 (a copy, labeled) is kept
    assert pq.read_table(tmp_path / "sel" / "duplicates.parquet").num_rows == info["dedup"]["duplicates"]


def test_the_scheduled_pipeline_dedups_before_selecting(tmp_path):
    from activeft.config import load_config

    cfg = load_config(str(Path(__file__).parents[1] / "configs" / "scheduled.yaml"),
                      [f"output={tmp_path}", "select.dedup_keep=first"], date="2026-01-02")
    assert (cfg.select.dedup, cfg.select.dedup_keep) == (0.98, "first")
    assert cfg.select.exclude.endswith("labeled-ids.parquet")  # the labeled set: kept, its near-copies left out
